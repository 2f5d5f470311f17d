"""File uploads over HTTP, against the real database and both file store backends."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from config import Settings
from server.app import create_app
from storage.embedded import ServiceUrls
from tests.conftest import eventually
from tests.files_support import (
    CSV,
    PDF,
    MiB,
    Multipart,
    S3Server,
    chunks_of,
    files_settings,
    png,
    random_bytes,
    repeated,
    s3_server,
    upload,
)
from tests.people import Caller, sign_up

__all__ = ["s3_server"]  # the fixture, imported for the tests below

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]


@dataclass
class Files:
    """One app with its own file store, and ways to look behind it."""

    client: TestClient
    settings: Settings
    s3: S3Server

    async def person(self, *roles: str) -> Caller:
        """A new account with `roles` (customer when none), signed in."""
        return await sign_up(self.client, *roles)

    async def rows(self, owner: Caller) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.settings.primary_dsn)
        try:
            return await conn.fetch("SELECT * FROM files WHERE owner_id = $1", owner.id)
        finally:
            await conn.close()

    async def objects(self) -> list[str]:
        if self.settings.files_backend == "s3":
            assert self.settings.s3_bucket is not None
            return await self.s3.keys(self.settings.s3_bucket)
        root = self.settings.files_dir
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    async def pending(self) -> list[Any]:
        """Temporary files (local) or unfinished multipart uploads (S3)."""
        if self.settings.files_backend == "s3":
            assert self.settings.s3_bucket is not None
            return await self.s3.pending_uploads(self.settings.s3_bucket)
        return list((self.settings.files_dir / ".tmp").iterdir())

    async def assert_nothing_stored(self, owner: Caller) -> None:
        assert await self.rows(owner) == []
        assert await self.objects() == []
        assert await self.pending() == []


FilesFactory = Callable[..., Awaitable[Files]]


@pytest.fixture
async def open_files(
    aiohttp_client: ClientFactory,
    database: ServiceUrls,
    base_settings: Settings,
    tmp_path: Path,
    s3_server: S3Server,
) -> FilesFactory:
    async def make(backend: str = "local", **overrides: Any) -> Files:
        bucket = await s3_server.new_bucket() if backend == "s3" else ""
        settings = files_settings(
            database, base_settings, backend, tmp_path, s3_server, bucket, **overrides
        )
        return Files(await aiohttp_client(await create_app(settings)), settings, s3_server)

    return make


@pytest.fixture
async def files(open_files: FilesFactory) -> Files:
    return await open_files()


def rejects(reason: str) -> float:
    return REGISTRY.get_sample_value("files_upload_rejects_total", {"reason": reason}) or 0.0


# -- storing and serving ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_upload_then_download_byte_identical(open_files: FilesFactory, backend: str) -> None:
    files = await open_files(backend)
    me = await files.person("customer")
    image = png(640, 480)
    response = await upload(
        files.client, image, filename="photo.png", headers=me.headers, part_type="text/plain"
    )
    body = await response.json()
    assert response.status == 201, body
    assert body["size"] == len(image)
    assert body["sha256"] == hashlib.sha256(image).hexdigest()
    assert body["content_type"] == "image/png"  # from the bytes, not the part's header
    assert response.headers["Location"] == f"/api/v1/files/{body['id']}"

    got = await files.client.get(f"/api/v1/files/{body['id']}", headers=me.headers)
    assert got.status == 200
    assert await got.read() == image
    assert got.headers["ETag"] == f'"{body["sha256"]}"'
    assert got.headers["Content-Type"] == "image/png"
    assert got.headers["Content-Length"] == str(len(image))
    assert got.headers["Content-Disposition"].startswith('inline; filename="photo.png"')
    assert got.headers["Accept-Ranges"] == "bytes"
    assert "sandbox" in got.headers["Content-Security-Policy"]

    head = await files.client.head(f"/api/v1/files/{body['id']}", headers=me.headers)
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(image))
    assert head.headers["ETag"] == got.headers["ETag"]
    assert await head.read() == b""

    [row] = await files.rows(me)
    assert row["original_name"] == "photo.png"
    assert row["size"] == len(image)
    assert row["sha256"].hex() == body["sha256"]
    assert await files.objects() == [row["storage_key"]]


async def test_csv_and_pdf_are_served_as_attachments(files: Files) -> None:
    me = await files.person("customer")
    for data, name, content_type in ((CSV, "prices.csv", "text/csv"), (PDF, "a.pdf", None)):
        created = await (await upload(files.client, data, filename=name, headers=me.headers)).json()
        got = await files.client.get(f"/api/v1/files/{created['id']}", headers=me.headers)
        assert await got.read() == data
        assert got.headers["Content-Disposition"].startswith(f'attachment; filename="{name}"')
        if content_type:
            assert got.headers["Content-Type"] == "text/csv; charset=utf-8"
        else:
            assert got.headers["Content-Type"] == "application/pdf"


async def test_conditional_get_answers_304(files: Files) -> None:
    me = await files.person()
    created = await (await upload(files.client, PDF, headers=me.headers)).json()
    url = f"/api/v1/files/{created['id']}"
    etag = (await files.client.get(url, headers=me.headers)).headers["ETag"]
    again = await files.client.get(url, headers={**me.headers, "If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    other = await files.client.get(url, headers={**me.headers, "If-None-Match": '"nope"'})
    assert other.status == 200


# -- ranges -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_single_ranges(open_files: FilesFactory, backend: str) -> None:
    files = await open_files(backend)
    me = await files.person()
    data = b"%PDF-" + random_bytes(300_000)
    created = await (await upload(files.client, data, headers=me.headers)).json()
    url = f"/api/v1/files/{created['id']}"
    size = len(data)
    for header, start, stop in (
        ("bytes=0-9", 0, 10),
        ("bytes=100000-", 100_000, size),
        ("bytes=-500", size - 500, size),
        ("bytes=299990-999999", 299_990, size),
    ):
        got = await files.client.get(url, headers={**me.headers, "Range": header})
        assert got.status == 206, header
        assert await got.read() == data[start:stop]
        assert got.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
        assert got.headers["Content-Length"] == str(stop - start)


async def test_unsatisfiable_and_ignored_ranges(files: Files) -> None:
    me = await files.person()
    data = b"%PDF-" + random_bytes(1000)
    created = await (await upload(files.client, data, headers=me.headers)).json()
    url = f"/api/v1/files/{created['id']}"

    for header in (f"bytes={len(data)}-", "bytes=-0"):
        refused = await files.client.get(url, headers={**me.headers, "Range": header})
        assert refused.status == 416
        assert refused.headers["Content-Range"] == f"bytes */{len(data)}"
        assert refused.headers["Content-Type"] == "application/problem+json"

    for header in ("bytes=0-1,5-9", "items=0-1", "bytes=9-2", "bytes=x-y"):
        whole = await files.client.get(url, headers={**me.headers, "Range": header})
        assert whole.status == 200, header
        assert await whole.read() == data

    stale = await files.client.get(
        url, headers={**me.headers, "Range": "bytes=0-1", "If-Range": '"old"'}
    )
    assert stale.status == 200
    etag = stale.headers["ETag"]
    fresh = await files.client.get(
        url, headers={**me.headers, "Range": "bytes=0-1", "If-Range": etag}
    )
    assert fresh.status == 206
    assert await fresh.read() == data[:2]


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "filename", "part_type"),
    [
        (b"<html><script>alert(document.cookie)</script></html>", "cat.png", "image/png"),
        (b"MZ\x90\x00" + bytes(4000), "invoice.pdf", "application/pdf"),
        (b"GIF89a" + bytes(100), "anim.gif", "image/gif"),  # a real GIF, but not allowed here
    ],
)
async def test_spoofed_or_unlisted_types_are_refused(
    open_files: FilesFactory, data: bytes, filename: str, part_type: str
) -> None:
    files = await open_files(files_allowed_types="image/png,image/jpeg,application/pdf,text/csv")
    me = await files.person()
    before = rejects("unsupported_type")
    response = await upload(
        files.client, data, filename=filename, headers=me.headers, part_type=part_type
    )
    assert response.status == 415
    problem = await response.json()
    assert response.headers["Content-Type"] == "application/problem+json"
    assert problem["type"] == "/problems/unsupported-type"
    assert "accepted" in problem["detail"]
    await files.assert_nothing_stored(me)
    assert rejects("unsupported_type") == before + 1


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_too_large_streamed_upload_gets_413_and_stores_nothing(
    open_files: FilesFactory, backend: str
) -> None:
    """A chunked body declares no length: the limit is enforced while it streams."""
    files = await open_files(backend, files_max_bytes=2 * MiB)
    me = await files.person()
    before = rejects("too_large")
    body = repeated(b"%PDF-" + random_bytes(64 * 1024), 3 * MiB)
    response = await upload(files.client, body, headers=me.headers)
    assert response.status == 413
    problem = await response.json()
    assert problem["type"] == "/problems/too-large"
    assert str(2 * MiB) in problem["detail"]
    await files.assert_nothing_stored(me)
    assert rejects("too_large") == before + 1


async def test_declared_length_over_the_limit_is_refused_before_reading(files: Files) -> None:
    me = await files.person()
    form = Multipart("big.pdf", chunks_of(b"%PDF-" + bytes(100)))
    response = await files.client.post(
        "/api/v1/files",
        data=b"".join([form.head(), b"%PDF-", bytes(5 * MiB), form.tail()]),
        headers={**me.headers, "Content-Type": form.content_type},
    )
    assert response.status == 413
    assert (await response.json())["type"] == "/problems/too-large"
    await files.assert_nothing_stored(me)


async def test_an_upload_larger_than_max_body_bytes_is_accepted(files: Files) -> None:
    """The global `MAX_BODY_BYTES` (1 MiB) does not apply: the upload has its own limit."""
    me = await files.person()
    data = b"%PDF-" + random_bytes(3 * MiB)
    assert len(data) > files.settings.max_body_bytes
    form = Multipart("big.pdf", chunks_of(data))
    response = await files.client.post(
        "/api/v1/files",
        data=form.head() + data + form.tail(),  # with a Content-Length this time
        headers={**me.headers, "Content-Type": form.content_type},
    )
    assert response.status == 201, await response.text()
    assert (await response.json())["size"] == len(data)


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/json", b'{"file": "x"}', 415),
        ("multipart/form-data", b"--x\r\n", 422),  # no boundary
    ],
)
async def test_bodies_that_are_not_a_file_upload(
    files: Files, content_type: str, body: bytes, status: int
) -> None:
    me = await files.person()
    response = await files.client.post(
        "/api/v1/files", data=body, headers={**me.headers, "Content-Type": content_type}
    )
    assert response.status == status
    assert response.headers["Content-Type"] == "application/problem+json"
    await files.assert_nothing_stored(me)


async def test_wrong_field_extra_parts_and_empty_files_are_refused(files: Files) -> None:
    me = await files.person()
    wrong = Multipart("a.csv", chunks_of(CSV), field="document")
    response = await files.client.post(
        "/api/v1/files",
        data=wrong.body(),
        headers={**me.headers, "Content-Type": wrong.content_type},
    )
    assert response.status == 422
    assert (await response.json())["errors"][0]["field"] == "file"

    extra = Multipart("a.csv", chunks_of(CSV))
    body = extra.head() + CSV + f"\r\n--{extra.boundary}\r\n".encode()
    body += b'Content-Disposition: form-data; name="note"\r\n\r\nhello' + extra.tail()
    response = await files.client.post(
        "/api/v1/files", data=body, headers={**me.headers, "Content-Type": extra.content_type}
    )
    assert response.status == 422

    response = await upload(files.client, b"", headers=me.headers)
    assert response.status == 422
    assert "empty" in (await response.json())["detail"]
    await files.assert_nothing_stored(me)


async def test_path_traversal_names_are_only_data(files: Files) -> None:
    me = await files.person()
    for hostile, served in (
        ("../../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ('../x"\r\nX-Evil: 1;.csv', "x_X-Evil_ 1_.csv"),  # sent encoded, as filename*
        ("../..", None),
    ):
        response = await upload(files.client, CSV, filename=hostile, headers=me.headers)
        assert response.status == 201, hostile
        created = await response.json()
        assert created["name"] == hostile.replace("\r\n", "")  # kept, as data only

        got = await files.client.get(f"/api/v1/files/{created['id']}", headers=me.headers)
        assert "X-Evil" not in got.headers
        disposition = got.headers["Content-Disposition"]
        fallback = disposition.split("; filename*=")[0]
        assert fallback == f'attachment; filename="{served or created["id"] + ".csv"}"'
        assert not re.search(r"[\r\n]", disposition)

    keys = await files.objects()
    assert len(keys) == 4
    assert all(re.fullmatch(r"files/[0-9a-f]{2}/[0-9a-f]{32}", key) for key in keys)
    assert not (files.settings.files_dir.parent / "etc").exists()

    unicode_name = "résumé 2024.csv"
    created = await (
        await upload(files.client, CSV, filename=unicode_name, headers=me.headers)
    ).json()
    got = await files.client.get(f"/api/v1/files/{created['id']}", headers=me.headers)
    assert got.headers["Content-Disposition"] == (
        f"attachment; filename=\"resume 2024.csv\"; filename*=UTF-8''{quote(unicode_name)}"
    )


# -- access -----------------------------------------------------------------------------------


async def test_other_users_files_do_not_exist_for_them(files: Files) -> None:
    owner, stranger, staff = (
        await files.person("customer"),
        await files.person("customer"),
        await files.person("staff"),
    )
    created = await (await upload(files.client, PDF, headers=owner.headers)).json()
    url = f"/api/v1/files/{created['id']}"

    for method in ("GET", "HEAD", "DELETE"):
        response = await files.client.request(method, url, headers=stranger.headers)
        assert response.status == 404, method
    assert (await files.client.get(url)).status == 401  # anonymous
    assert (await files.client.get(url, headers=staff.headers)).status == 200

    assert (await files.client.delete(url, headers=owner.headers)).status == 204
    assert (await files.client.get(url, headers=owner.headers)).status == 404
    assert await files.rows(owner) == []
    assert await files.objects() == []


async def test_staff_may_delete_any_file(files: Files) -> None:
    owner, staff = await files.person("customer"), await files.person("staff")
    created = await (await upload(files.client, PDF, headers=owner.headers)).json()
    url = f"/api/v1/files/{created['id']}"
    assert (await files.client.delete(url, headers=staff.headers)).status == 204
    assert (await files.client.get(url, headers=owner.headers)).status == 404


async def test_unknown_and_malformed_ids(files: Files) -> None:
    me = await files.person()
    missing = await files.client.get(
        "/api/v1/files/0b7e2d0a-0000-4000-8000-000000000000", headers=me.headers
    )
    assert missing.status == 404
    bad = await files.client.get("/api/v1/files/not-a-uuid", headers=me.headers)
    assert bad.status == 422
    assert (await bad.json())["errors"][0]["field"] == "file_id"


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_a_row_whose_object_is_missing_answers_404(
    open_files: FilesFactory, backend: str
) -> None:
    files = await open_files(backend)
    me = await files.person()
    created = await (await upload(files.client, PDF, headers=me.headers)).json()
    [row] = await files.rows(me)
    if backend == "s3":
        async with files.s3.client() as s3:
            await s3.delete_object(Bucket=files.settings.s3_bucket, Key=row["storage_key"])
    else:
        (files.settings.files_dir / row["storage_key"]).unlink()
    missing_before = REGISTRY.get_sample_value("files_missing_objects_total") or 0
    url = f"/api/v1/files/{created['id']}"
    for method in ("GET", "HEAD"):
        response = await files.client.request(method, url, headers=me.headers)
        assert response.status == 404, method
    assert REGISTRY.get_sample_value("files_missing_objects_total") == missing_before + 2


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_a_failed_store_write_leaves_no_row(open_files: FilesFactory, backend: str) -> None:
    files = await open_files(backend)
    me = await files.person()
    if backend == "s3":  # the bucket goes away under the running server
        async with files.s3.client() as s3:
            await s3.delete_bucket(Bucket=files.settings.s3_bucket)
    else:  # the folder objects are renamed into cannot be made
        (files.settings.files_dir / "files").write_bytes(b"in the way")
    response = await upload(files.client, PDF, headers=me.headers)
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert await files.rows(me) == []
    if backend == "local":
        assert await files.pending() == []


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_an_interrupted_upload_leaves_nothing(open_files: FilesFactory, backend: str) -> None:
    """The client sends 6 MiB of a declared 16 MiB and drops the connection."""
    files = await open_files(backend, files_max_bytes=32 * MiB)
    me = await files.person()
    gone_before = rejects("client_gone")
    form = Multipart("big.pdf", chunks_of(b""))
    _, writer = await asyncio.open_connection(files.client.host, files.client.port)
    head = (
        "POST /api/v1/files HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: {form.content_type}\r\nContent-Length: {16 * MiB}\r\n"
        f"Authorization: Bearer {me.access_token}\r\n\r\n"
    ).encode()
    writer.write(head + form.head() + b"%PDF-")
    async for chunk in repeated(random_bytes(MiB), 6 * MiB):
        writer.write(chunk)
        await writer.drain()

    async def storing() -> bool:
        return bool(await files.pending())

    await eventually(storing)  # a temporary file, or a multipart upload with a part in it
    writer.transport.abort()

    async def cleaned_up() -> bool:
        return not await files.pending() and rejects("client_gone") > gone_before

    await eventually(cleaned_up)
    await files.assert_nothing_stored(me)


async def test_uploads_beyond_the_limit_at_once_get_503(open_files: FilesFactory) -> None:
    files = await open_files(files_max_uploads=1)
    me = await files.person()
    release = asyncio.Event()

    async def held() -> AsyncIterator[bytes]:
        yield CSV
        await release.wait()
        yield b"C-3,Tea,100\n"

    first = asyncio.create_task(upload(files.client, held(), headers=me.headers))

    async def started() -> bool:
        return bool(await files.pending())

    await eventually(started)
    second = await upload(files.client, CSV, headers=me.headers)
    assert second.status == 503
    assert second.headers["Retry-After"]
    assert (await second.json())["type"] == "/problems/busy"
    release.set()
    assert (await first).status == 201


async def test_metrics_report_stored_files_and_rejects(files: Files) -> None:
    me = await files.person()
    await upload(files.client, CSV, headers=me.headers)
    await upload(files.client, b"\x00binary", headers=me.headers)
    text = await (await files.client.get("/metrics")).text()
    for name in (
        'files_stored_total{content_type="text/csv"}',
        'files_stored_bytes_total{content_type="text/csv"}',
        "files_upload_duration_seconds_count",
        'files_upload_rejects_total{reason="unsupported_type"}',
    ):
        assert name in text
