"""Types are decided by the bytes: signatures for binary formats, a stated rule for CSV."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest

from actors.errors import InvalidInput, TooLarge, UnsupportedType
from actors.filetypes import SAMPLE_BYTES, detect
from actors.uploads import Inspection
from config.settings import FILE_TYPES
from tests.files_support import CSV, PDF, chunks_of, png

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64
GIF = b"GIF89a" + b"\x01\x00\x01\x00" + b"\x00" * 32
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (png(), "image/png"),
        (JPEG, "image/jpeg"),
        (GIF, "image/gif"),
        (WEBP, "image/webp"),
        (PDF, "application/pdf"),
        (CSV, "text/csv"),
        (b"\xef\xbb\xbfa;b\n1;2\n", "text/csv"),  # BOM, semicolons
        (b"a\tb\tc\n1\t2\t3", "text/csv"),  # tabs, no final newline
        (b'name,note\n"x","line one\nline two"\n', "text/csv"),  # quoted newline
    ],
)
def test_recognised(data: bytes, expected: str) -> None:
    assert detect(data, complete=True) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"<html><script>alert(1)</script></html>",
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>x</script></svg>',
        b"  <?xml version='1.0'?><a,b>\n",
        b"MZ\x90\x00\x03\x00\x00\x00",  # a Windows executable
        b"\x7fELF\x02\x01\x01",
        b"PK\x03\x04" + b"\x00" * 30,  # a zip (or docx)
        b"just one column\nof text\n",
        b"a,b\n1,2,3\n",  # ragged
        b"a,b\x00\n1,2\n",  # NUL byte
        b"a,b\n\xff\xfe,1\n",  # not UTF-8
        b'a,"b\n1,2\n',  # unterminated quote
        b"",
    ],
)
def test_refused(data: bytes) -> None:
    assert detect(data, complete=True) is None


def test_a_long_first_line_without_a_newline_is_not_csv() -> None:
    assert detect(b"a," * SAMPLE_BYTES, complete=False) is None


async def collect(chunks: AsyncIterator[bytes], into: list[bytes]) -> None:
    async for chunk in chunks:
        into.append(chunk)


async def inspect(data: bytes, *, limit: int = 1 << 20, allowed=FILE_TYPES) -> Inspection:
    inspection = Inspection(limit=limit, allowed=allowed)
    passed = b"".join([chunk async for chunk in inspection.passing(chunks_of(data, 1000))])
    assert passed == data
    return inspection


async def test_inspection_hashes_counts_and_types() -> None:
    data = png(300, 300)
    inspection = await inspect(data)
    assert inspection.content_type == "image/png"
    assert inspection.size == len(data)
    assert inspection.sha256 == hashlib.sha256(data).digest()


async def test_inspection_stops_as_soon_as_the_limit_is_crossed() -> None:
    inspection = Inspection(limit=10_000, allowed=FILE_TYPES)
    passed: list[bytes] = []

    async def source() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"a,b\n" * 250  # 1000 bytes

    with pytest.raises(TooLarge):
        await collect(inspection.passing(source()), passed)
    assert len(b"".join(passed)) == 10_000
    assert inspection.size == 10_000 + 1000  # the crossing chunk was counted, not passed on


async def test_a_type_not_allowed_is_refused_before_anything_passes() -> None:
    inspection = Inspection(limit=1 << 20, allowed=("image/png",))
    passed: list[bytes] = []
    with pytest.raises(UnsupportedType, match="application/pdf, which is not accepted"):
        await collect(inspection.passing(chunks_of(PDF * 200, 100)), passed)
    assert passed == []  # no byte of a refused file reaches the store


async def test_binary_after_a_csv_head_is_refused() -> None:
    data = b"a,b\n1,2\n" * 2000 + b"\x00\x01binary"
    with pytest.raises(UnsupportedType, match="binary data"):
        await inspect(data)


async def test_an_empty_file_is_refused() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        await inspect(b"")
