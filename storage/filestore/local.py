"""The local-disk backend: one file per object under a root folder.

A write goes to a fresh file in `<root>/.tmp/`, is flushed to disk, and is then renamed into
place (`os.replace`, atomic within one file system): a reader sees the whole object or none,
never half of one, even across a crash. Temporary files are removed when a write fails or is
abandoned; ones left by a killed process are swept when a store is opened.

Disk calls run in the default thread pool, a batch of up to `WRITE_BATCH` bytes per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

from storage.filestore import CHUNK_BYTES, ObjectInfo, ObjectMissing, StoreError, check_key

log = logging.getLogger("backend.files")

T = TypeVar("T")

WRITE_BATCH = 1 << 20
STALE_TEMP_SECONDS = 3600.0  # older temporary files belong to no live write


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._temp = self.root / ".tmp"
        self._temp.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.sweep_temporary(STALE_TEMP_SECONDS)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def sweep_temporary(self, older_than: float) -> int:
        """Remove temporary files older than `older_than` seconds; return how many."""
        cutoff = time.time() - older_than
        removed = 0
        for entry in self._temp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime <= cutoff:
                    entry.unlink()
                    removed += 1
        if removed:
            log.warning("removed abandoned temporary files", extra={"count": removed})
        return removed

    def temporary_files(self) -> list[Path]:
        return list(self._temp.iterdir())

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        target = self.path(key)
        temp = self._temp / f"{os.urandom(12).hex()}.part"
        file = await _in_thread(_create, temp)
        size = 0
        try:
            batch = bytearray()
            async for chunk in chunks:
                batch += chunk
                size += len(chunk)
                if len(batch) >= WRITE_BATCH:
                    await _in_thread(file.write, bytes(batch))
                    batch.clear()
            if batch:
                await _in_thread(file.write, bytes(batch))
            await _in_thread(_publish, file, temp, target)
        except OSError as error:
            raise StoreError(f"writing {key!r} failed: {error}") from error
        finally:
            # Nothing partial may remain: the temporary file goes whatever happened.
            file.close()
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        return size

    @asynccontextmanager
    async def open(
        self, key: str, start: int = 0, stop: int | None = None
    ) -> AsyncIterator[_FileReader]:
        path = self.path(key)
        try:
            file = await _in_thread(path.open, "rb")
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        try:
            size = os.fstat(file.fileno()).st_size
            end = size if stop is None else min(stop, size)
            yield _FileReader(file, start, max(0, end - start))
        finally:
            file.close()

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            result = await _in_thread(self.path(key).stat)
        except FileNotFoundError:
            return None
        return ObjectInfo(key, result.st_size)

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await _in_thread(self.path(key).unlink)


class _FileReader:
    def __init__(self, file: BinaryIO, start: int, length: int) -> None:
        self._file = file
        self._start = start
        self.length = length

    async def __aiter__(self) -> AsyncIterator[bytes]:
        left = self.length
        if left:
            await _in_thread(self._file.seek, self._start)
        while left > 0:
            chunk = await _in_thread(self._file.read, min(CHUNK_BYTES, left))
            if not chunk:
                raise StoreError("the file is shorter than it was when opened")
            left -= len(chunk)
            yield chunk


def _create(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    return os.fdopen(fd, "wb", buffering=0)


def _publish(file: BinaryIO, temp: Path, target: Path) -> None:
    """Make the written file durable, then visible under its key in one rename."""
    os.fsync(file.fileno())
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    os.replace(temp, target)
    directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


async def _in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run a blocking call in a thread. When the caller is cancelled, wait for the call to end
    before passing the cancellation on, so the file is never closed under a running write."""
    future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise
