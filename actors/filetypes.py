"""What an upload is, judged by its bytes, never by the name or the header the client sent.

Binary formats are recognised by their signature (magic number) at offset 0:

    image/png        89 50 4E 47 0D 0A 1A 0A
    image/jpeg       FF D8 FF
    image/gif        "GIF87a" | "GIF89a"
    image/webp       "RIFF" <4 bytes> "WEBP"
    application/pdf  "%PDF-"

CSV has no signature, so a file is CSV when all of these hold:

1. every byte of it is UTF-8 text (a leading BOM allowed) with no control character other
   than tab, CR and LF: checked over the *whole* stream, not just the sample, so binary data
   cannot hide behind a text-looking head;
2. its sample (the first `SAMPLE_BYTES`, cut back to the last complete line unless that is the
   whole file) does not start with `<` (HTML, XML and SVG are refused, not served as CSV);
3. the sample parses as CSV (RFC 4180 quoting, `csv` module, strict) with one delimiter among
   `,` `;` and tab giving every record the same number of fields, at least two.

A one-column "CSV" is thereby refused: it cannot be told apart from any other text file.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable

SAMPLE_BYTES = 8192

_SIGNATURES: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("image/png", lambda b: b.startswith(b"\x89PNG\r\n\x1a\n")),
    ("image/jpeg", lambda b: b.startswith(b"\xff\xd8\xff")),
    ("image/gif", lambda b: b[:6] in (b"GIF87a", b"GIF89a")),
    ("image/webp", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"),
    ("application/pdf", lambda b: b.startswith(b"%PDF-")),
)
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BOM = codecs.BOM_UTF8
_DELIMITERS = (",", ";", "\t")

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
TEXT_TYPES = frozenset({"text/csv"})


def detect(sample: bytes, *, complete: bool) -> str | None:
    """The type of a file beginning with `sample` (the whole file when `complete`), or None."""
    for content_type, matches in _SIGNATURES:
        if matches(sample):
            return content_type
    return "text/csv" if _looks_like_csv(sample, complete=complete) else None


def _looks_like_csv(sample: bytes, *, complete: bool) -> bool:
    if sample.startswith(_BOM):
        sample = sample[len(_BOM) :]
    if not complete:
        cut = sample.rfind(b"\n")
        if cut < 0:
            return False  # no complete line in the sample: not a table of records
        sample = sample[: cut + 1]
    if _CONTROL.search(sample):
        return False
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if not text.strip() or text.lstrip().startswith("<"):
        return False
    return any(_consistent(text, delimiter) for delimiter in _DELIMITERS)


def _consistent(text: str, delimiter: str) -> bool:
    try:
        widths = {
            len(record)
            for record in csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
            if record
        }
    except csv.Error:
        return False
    return len(widths) == 1 and widths.pop() >= 2


class TextCheck:
    """Checks, chunk by chunk, that a stream is UTF-8 text without stray control characters."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def feed(self, chunk: bytes) -> bool:
        if _CONTROL.search(chunk):
            return False
        try:
            self._decoder.decode(chunk)
        except UnicodeDecodeError:
            return False
        return True

    def finish(self) -> bool:
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
        return True
