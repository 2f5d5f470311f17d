"""The file store's contract, on both backends: local disk and a real S3-compatible server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from config import Settings
from storage.embedded import ServiceUrls
from storage.filestore import FileStore, ObjectInfo, ObjectMissing, check_key, new_key, open_store
from storage.filestore.local import LocalStore
from tests.files_support import MiB, S3Server, chunks_of, files_settings, random_bytes, s3_server

__all__ = ["s3_server"]  # the fixture, imported for the tests below

BACKENDS = ["local", "s3"]


class Boom(Exception):
    pass


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest,
    database: ServiceUrls,
    base_settings: Settings,
    tmp_path: Path,
    s3_server: S3Server,
) -> AsyncIterator[tuple[FileStore, Settings]]:
    bucket = await s3_server.new_bucket() if request.param == "s3" else ""
    settings = files_settings(database, base_settings, request.param, tmp_path, s3_server, bucket)
    async with open_store(settings) as store:
        yield store, settings


async def read_all(store: FileStore, key: str, start: int = 0, stop: int | None = None) -> bytes:
    async with store.open(key, start, stop) as reader:
        data = b"".join([chunk async for chunk in reader])
    assert len(data) == reader.length
    return data


async def test_put_then_read_whole_and_ranges(backend: tuple[FileStore, Settings]) -> None:
    store, _ = backend
    data = random_bytes(700_000)
    key = new_key("test")
    assert await store.put(key, chunks_of(data)) == len(data)
    assert await read_all(store, key) == data
    assert await read_all(store, key, 10, 20) == data[10:20]
    assert await read_all(store, key, 699_990) == data[699_990:]
    assert await read_all(store, key, 5, 5) == b""
    assert await read_all(store, key, 690_000, 10_000_000) == data[690_000:]
    assert await store.stat(key) == ObjectInfo(key, len(data))


async def test_missing_objects(backend: tuple[FileStore, Settings]) -> None:
    store, _ = backend
    key = new_key("test")
    assert await store.stat(key) is None
    with pytest.raises(ObjectMissing):
        async with store.open(key):
            pass
    await store.delete(key)  # deleting what is not there is fine


async def test_delete_removes_the_object(backend: tuple[FileStore, Settings]) -> None:
    store, _ = backend
    key = new_key("test")
    await store.put(key, chunks_of(b"abc"))
    await store.delete(key)
    assert await store.stat(key) is None


async def test_large_objects_stream_in_parts(
    backend: tuple[FileStore, Settings], s3_server: S3Server
) -> None:
    """11 MiB: on S3, three parts of a multipart upload (5 MiB parts in the tests)."""
    store, settings = backend
    block = random_bytes(MiB)

    async def eleven() -> AsyncIterator[bytes]:
        for i in range(11):
            yield bytes([i]) + block[1:]

    key = new_key("test")
    assert await store.put(key, eleven()) == 11 * MiB
    middle = await read_all(store, key, 5 * MiB - 3, 5 * MiB + 3)
    assert middle == block[-3:] + bytes([5]) + block[1:3]
    if settings.files_backend == "s3":
        assert await s3_server.pending_uploads(settings.s3_bucket) == []


@pytest.mark.parametrize("fail_after", [1, 7])
async def test_a_failed_write_leaves_nothing(
    backend: tuple[FileStore, Settings], s3_server: S3Server, fail_after: int
) -> None:
    """The source fails after 1 MiB (one PutObject on S3) or 7 MiB (a multipart upload)."""
    store, settings = backend
    key = new_key("test")

    async def failing() -> AsyncIterator[bytes]:
        for _ in range(fail_after):
            yield random_bytes(MiB)
        raise Boom

    with pytest.raises(Boom):
        await store.put(key, failing())
    assert await store.stat(key) is None
    await _assert_no_leftovers(store, settings, s3_server)


async def test_a_cancelled_write_leaves_nothing(
    backend: tuple[FileStore, Settings], s3_server: S3Server
) -> None:
    store, settings = backend
    key = new_key("test")
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield random_bytes(MiB)
            started.set()

    task = asyncio.create_task(store.put(key, endless()))
    await started.wait()
    await asyncio.sleep(0.2)  # let parts go up on S3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.stat(key) is None
    await _assert_no_leftovers(store, settings, s3_server)


async def _assert_no_leftovers(store: FileStore, settings: Settings, s3: S3Server) -> None:
    if isinstance(store, LocalStore):
        assert store.temporary_files() == []
        assert [p for p in store.root.rglob("*") if p.is_file()] == []
    else:
        assert settings.s3_bucket is not None
        assert await s3.keys(settings.s3_bucket) == []
        assert await s3.pending_uploads(settings.s3_bucket) == []


@pytest.mark.parametrize(
    "key", ["../etc/passwd", "/abs", "a/../b", ".hidden", "a//b", "a/.x", "", "a\\b", "a b"]
)
def test_keys_cannot_escape_the_store(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        check_key(key)
    with pytest.raises(ValueError):
        LocalStore(tmp_path).path(key)


def test_stale_temporary_files_are_swept(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (store.root / ".tmp" / "old.part").write_bytes(b"x")
    assert store.sweep_temporary(older_than=-1) == 1
    assert store.temporary_files() == []
