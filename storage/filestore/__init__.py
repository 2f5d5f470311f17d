"""The file store: objects (bytes under a key) on local disk or in S3-compatible storage.

One small interface, two backends chosen by configuration (`FILES_BACKEND`):

    async with open_store(settings) as store:
        size = await store.put(key, chunks)             # chunks: any AsyncIterable[bytes]
        async with store.open(key, start, stop) as reader:
            async for chunk in reader: ...              # bytes [start, stop), streamed
        info = await store.stat(key)                    # ObjectInfo, or None when absent
        await store.delete(key)                         # absent already is fine

* `put` is all or nothing: the object appears under `key` complete, or not at all. When the
  chunk iterator raises (a client went away, a size limit was crossed), or the write fails,
  nothing is left behind and the error propagates. Writing to an existing key replaces it.
* `open` raises `ObjectMissing` at once when there is no such object, before any byte is read,
  so callers can still answer 404. Memory stays bounded by one chunk whatever the size.
* Keys are made by the program (`new_key`), never taken from a client: `check_key` refuses
  anything but `segment/segment/...` of `[A-Za-z0-9_.-]`, starting alphanumeric, so no key can
  climb out of the store's root or name a hidden file.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from config import Settings

# What one read or write moves at a time: big enough to amortise a thread hop or a request,
# small enough that a few hundred concurrent transfers stay in tens of MiB.
CHUNK_BYTES = 256 * 1024

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}){0,7}$")


class StoreError(Exception):
    """The file store could not do what was asked (an I/O or a remote failure)."""


class ObjectMissing(StoreError):
    """No object is stored under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no object under {key!r}")
        self.key = key


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int


class ObjectReader(Protocol):
    """The bytes of one object (or of a range of it), as chunks of at most `CHUNK_BYTES`."""

    @property
    def length(self) -> int:
        """How many bytes this reader yields in all."""
        ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class FileStore(Protocol):
    """Where file contents live. See the module's docstring for the contract."""

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Store the chunks under `key`, atomically; return the number of bytes stored."""
        ...

    def open(
        self, key: str, start: int = 0, stop: int | None = None
    ) -> AbstractAsyncContextManager[ObjectReader]:
        """Read bytes `[start, stop)` (`stop` None: to the end); `ObjectMissing` if absent."""
        ...

    async def stat(self, key: str) -> ObjectInfo | None: ...

    async def delete(self, key: str) -> None: ...


def check_key(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"not a valid object key: {key!r}")
    return key


def new_key(prefix: str, suffix: str = "") -> str:
    """A fresh, unguessable key under `prefix`: `prefix/ab/ab12...` (spread over 256 folders).

    `suffix` (such as `.csv`) is for people browsing the bucket; nothing relies on it."""
    token = secrets.token_hex(16)
    return check_key(f"{prefix}/{token[:2]}/{token}{suffix}")


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[FileStore]:
    """The configured backend, ready to use, released on exit."""
    if settings.files_backend == "s3":
        from storage.filestore.s3 import S3Store  # aiobotocore is imported only when used

        async with S3Store.connect(settings) as s3:
            yield s3
    else:
        from storage.filestore.local import LocalStore

        yield LocalStore(settings.files_dir)
