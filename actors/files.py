"""The files actor: owns the file store and its database pools; stores, finds, opens and
deletes uploaded files.

Order of effects, so that no failure leaves a half state behind:

* store: the bytes go to the store first, under a generated key, all or nothing; the row is
  written only after the object is complete, and if writing the row fails the object is
  removed. An interrupted or refused upload leaves neither an object nor a row.
* delete: the row is deleted and, in the same transaction, the object; if removing the object
  fails the transaction rolls back and the row stays (the client may retry).
* a row whose object has gone missing answers 404 (and is counted), never 500.

Access: a file is visible to its owner and to staff; to anyone else it does not exist (404).

Uploads are long and hold no database connection while they stream, so the actor's
concurrency is the database pool plus `FILES_MAX_UPLOADS`: at most that many uploads run at
once (more are refused with 503 and `Retry-After`), and the rest of the slots always remain
for quick messages, which never wait behind a slow upload.
"""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
from collections.abc import AsyncIterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any
from uuid import UUID, uuid4

from asyncpg import Record

from actors import pools
from actors.access import STAFF_AND_ADMIN
from actors.errors import (
    Busy,
    ClientGone,
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    StorageUnavailable,
    TooLarge,
    UnsupportedType,
)
from actors.identity import Principal
from actors.runtime import Actor, Message, handler
from actors.system import ActorKey
from actors.uploads import Inspection
from config import Settings
from observability import metrics
from storage import files as files_sql
from storage.filestore import (
    FileStore,
    ObjectMissing,
    ObjectReader,
    StoreError,
    new_key,
    open_store,
)
from storage.postgres import Database, ReplicaSet

log = logging.getLogger("backend.files")

NAME_LIMIT = 255

_REJECT_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (TooLarge, "too_large"),
    (UnsupportedType, "unsupported_type"),
    (InvalidInput, "invalid"),
    (ClientGone, "client_gone"),
    (Busy, "busy"),
    (DeadlineExceeded, "timeout"),
    (asyncio.CancelledError, "timeout"),  # the actor cancels a message at its deadline
    (StorageUnavailable, "storage_error"),
)


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A stored file's metadata, as the actor hands it out after checking access."""

    id: UUID
    owner_id: str
    name: str
    content_type: str
    size: int
    sha256: str
    key: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: Record) -> FileInfo:
        return cls(
            id=row["id"],
            owner_id=str(row["owner_id"]),
            name=row["original_name"],
            content_type=row["content_type"],
            size=row["size"],
            sha256=row["sha256"].hex(),
            key=row["storage_key"],
            created_at=row["created_at"],
        )

    @property
    def etag(self) -> str:
        """A strong validator: the content's hash (files never change once stored)."""
        return f'"{self.sha256}"'


class Download:
    """An opened object (or a range of it); `async with` it, then iterate `reader`."""

    def __init__(self, reader: ObjectReader, resources: AsyncExitStack) -> None:
        self.reader = reader
        self._resources = resources

    async def __aenter__(self) -> ObjectReader:
        return self.reader

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._resources.aclose()


@dataclass(frozen=True, slots=True)
class StoreFile(Message[FileInfo]):
    owner: Principal
    name: str | None
    chunks: AsyncIterable[bytes]


@dataclass(frozen=True, slots=True)
class FindFile(Message[FileInfo]):
    principal: Principal
    file_id: UUID


@dataclass(frozen=True, slots=True)
class OpenFile(Message[Download]):
    """Open bytes `[start, stop)` of a file found with `FindFile`."""

    file: FileInfo
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class CheckFile(Message[None]):
    """Confirm that a file found with `FindFile` still has its object (for HEAD)."""

    file: FileInfo


@dataclass(frozen=True, slots=True)
class DeleteFile(Message[None]):
    principal: Principal
    file_id: UUID


def may_see(principal: Principal, owner_id: int | str) -> bool:
    return principal.user_id == str(owner_id) or principal.has_role(*STAFF_AND_ADMIN)


def clean_name(name: str | None) -> str:
    """The client's file name as data: NFC, control characters removed, at most 255 chars."""
    if not name:
        return ""
    name = unicodedata.normalize("NFC", name)
    return "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")[:NAME_LIMIT].strip()


class Files(Actor):
    def __init__(self, settings: Settings, replicas: ReplicaSet) -> None:
        self.settings = settings
        self.replicas = replicas
        self.db: Database
        self.store: FileStore
        self._resources = AsyncExitStack()
        self._uploads = 0

    async def on_start(self) -> None:
        s = self.settings
        self.db = await self._resources.enter_async_context(
            pools.database(s, self.replicas, "files")
        )
        try:
            self.store = await self._resources.enter_async_context(open_store(s))
        except StoreError:
            await self._resources.aclose()
            raise

    async def on_stop(self) -> None:
        await self._resources.aclose()

    # -- uploads -----------------------------------------------------------------------------

    @handler
    async def store_file(self, message: StoreFile) -> FileInfo:
        if self._uploads >= self.settings.files_max_uploads:
            metrics.FILES_UPLOAD_REJECTS.labels("busy").inc()
            raise Busy(f"{self._uploads} uploads are in progress; try again shortly")
        self._uploads += 1
        metrics.FILES_UPLOADS_IN_PROGRESS.inc()
        started = time.perf_counter()
        try:
            file = await self._store(message)
        except BaseException as error:
            metrics.FILES_UPLOAD_REJECTS.labels(_reject_reason(error)).inc()
            raise
        finally:
            self._uploads -= 1
            metrics.FILES_UPLOADS_IN_PROGRESS.dec()
        metrics.FILES_UPLOAD_DURATION.observe(time.perf_counter() - started)
        metrics.FILES_STORED.labels(file.content_type).inc()
        metrics.FILES_STORED_BYTES.labels(file.content_type).inc(file.size)
        return file

    async def _store(self, message: StoreFile) -> FileInfo:
        inspection = Inspection(
            limit=self.settings.files_max_bytes, allowed=self.settings.files_allowed_types
        )
        key = new_key("files")
        try:
            await self.store.put(key, inspection.passing(message.chunks))
        except StoreError as error:
            raise StorageUnavailable(f"the file store failed: {error}") from error
        assert inspection.content_type is not None  # passing() decided it, or raised
        try:
            row = await self.db.write(
                files_sql.insert,
                file_id=uuid4(),
                owner_id=int(message.owner.user_id),
                original_name=clean_name(message.name),
                content_type=inspection.content_type,
                size=inspection.size,
                sha256=inspection.sha256,
                storage_key=key,
            )
        except BaseException:
            await discard(self.store, key)
            raise
        assert row is not None  # an upload has no source whose variant could already exist
        return FileInfo.from_row(row)

    # -- reads -------------------------------------------------------------------------------

    @handler
    async def find_file(self, message: FindFile) -> FileInfo:
        row = await self.db.read(files_sql.get, message.file_id)
        if row is None:  # files never change, so only a miss may be stale: ask the primary
            async with self.db.primary() as conn:
                row = await files_sql.get(conn, message.file_id)
        if row is None or not may_see(message.principal, row["owner_id"]):
            raise NotFound("no such file")
        return FileInfo.from_row(row)

    @handler
    async def open_file(self, message: OpenFile) -> Download:
        resources = AsyncExitStack()
        try:
            reader = await resources.enter_async_context(
                self.store.open(message.file.key, message.start, message.stop)
            )
        except ObjectMissing:
            raise self._missing(message.file) from None
        except StoreError as error:
            raise StorageUnavailable(f"the file store failed: {error}") from error
        return Download(reader, resources)

    @handler
    async def check_file(self, message: CheckFile) -> None:
        try:
            found = await self.store.stat(message.file.key)
        except StoreError as error:
            raise StorageUnavailable(f"the file store failed: {error}") from error
        if found is None:
            raise self._missing(message.file)

    def _missing(self, file: FileInfo) -> NotFound:
        metrics.FILES_MISSING_OBJECTS.inc()
        log.warning("file has no object in the store", extra={"file_id": str(file.id)})
        return NotFound("no such file")

    # -- deletes -----------------------------------------------------------------------------

    @handler
    async def delete_file(self, message: DeleteFile) -> None:
        await self.db.write(self._delete, message.principal, message.file_id)

    async def _delete(self, conn: Any, principal: Principal, file_id: UUID) -> None:
        rows = await files_sql.delete(conn, file_id)
        file = next((row for row in rows if row["id"] == file_id), None)
        if file is None or not may_see(principal, file["owner_id"]):
            raise NotFound("no such file")  # rolls the delete back
        for row in rows:  # the file and its thumbnail
            try:
                await self.store.delete(row["storage_key"])
            except StoreError as error:
                raise StorageUnavailable(f"the file store failed: {error}") from error
        metrics.FILES_DELETED.inc(len(rows))
        metrics.FILES_DELETED_BYTES.inc(sum(row["size"] for row in rows))


async def discard(store: FileStore, key: str) -> None:
    """Remove an object that has no row (and will not get one); runs even while cancelled."""
    try:
        await asyncio.shield(store.delete(key))
    except (StoreError, asyncio.CancelledError) as error:
        log.error("could not remove an unrecorded object: %s", error, extra={"key": key})


def _reject_reason(error: BaseException) -> str:
    for kind, reason in _REJECT_REASONS:
        if isinstance(error, kind):
            return reason
    return "error"


FILES = ActorKey[Files]("files")
