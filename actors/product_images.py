"""Product images: staff attach an uploaded image to a product; anyone may fetch it and its
thumbnail. The thumbnail is made by a job (`actors.thumbnails.make_thumbnail`).

Until the jobs queue takes thumbnail jobs, they run here, in the process that accepted the
image, reported through the image's `thumbnail` state: `queued` -> `running` -> `succeeded`
or `failed` (with the error). A failure that may pass (the store or the database briefly
unavailable) is retried with exponential backoff; an image that cannot be decoded fails at
once. Jobs interrupted by a stop are taken up again at the next start (they are idempotent).
Moving them to the queue replaces `ThumbnailJobs.submit` and `resume` with an enqueue.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from asyncpg import Record

from actors import pools
from actors.errors import NotFound, UnsupportedType
from actors.files import FileInfo, Files, FindFile
from actors.filetypes import IMAGE_TYPES
from actors.identity import Principal
from actors.runtime import Actor, ActorRef, Message, handler
from actors.system import ActorKey
from actors.thumbnails import ThumbnailFailed, make_thumbnail
from config import Settings
from observability import metrics
from storage import files as files_sql
from storage import product_images as images_sql
from storage.filestore import FileStore, open_store
from storage.postgres import Database, ReplicaSet

log = logging.getLogger("backend.files")

Variant = Literal["image", "thumbnail"]


@dataclass(frozen=True, slots=True)
class ProductImage:
    product_id: int
    file_id: UUID
    content_type: str
    thumbnail_state: str
    thumbnail_error: str | None


@dataclass(frozen=True, slots=True)
class AttachImage(Message[ProductImage]):
    principal: Principal
    product_id: int
    file_id: UUID


@dataclass(frozen=True, slots=True)
class DescribeImage(Message[ProductImage]):
    product_id: int


@dataclass(frozen=True, slots=True)
class ImageFile(Message[FileInfo]):
    """The file to serve for a product's image or its thumbnail."""

    product_id: int
    variant: Variant


@dataclass(frozen=True, slots=True)
class DetachImage(Message[None]):
    product_id: int


class ThumbnailJobs:
    """Thumbnail jobs run in this process, at most `concurrency` at once."""

    def __init__(
        self,
        db: Database,
        store: FileStore,
        settings: Settings,
        *,
        attempts: int = 4,
        backoff: float = 0.5,
        concurrency: int = 2,
    ) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.attempts = attempts
        self.backoff = backoff
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, product_id: int, file_id: UUID) -> None:
        # A context of its own: the job outlives the request that asked for it.
        task = asyncio.create_task(
            self._run(product_id, file_id), name="thumbnail", context=contextvars.Context()
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume(self) -> None:
        async with self.db.primary() as conn:
            rows = await images_sql.unfinished(conn)
        for row in rows:
            self.submit(row["product_id"], row["file_id"])

    async def idle(self) -> None:
        """Wait until no job is running (for tests and orderly stops)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()  # left `running`: taken up again at the next start
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, product_id: int, file_id: UUID) -> None:
        async with self._slots:
            await self._state(product_id, file_id, "running")
            for attempt in range(1, self.attempts + 1):
                try:
                    await make_thumbnail(self.db, self.store, self.settings, file_id)
                except ThumbnailFailed as error:
                    await self._finish(product_id, file_id, "failed", str(error))
                    return
                except Exception as error:
                    log.warning("thumbnail attempt %d failed: %r", attempt, error)
                    if attempt == self.attempts:
                        await self._finish(product_id, file_id, "failed", "gave up after retries")
                        return
                    delay = self.backoff * 2 ** (attempt - 1)
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                else:
                    await self._finish(product_id, file_id, "succeeded", None)
                    return

    async def _finish(self, product_id: int, file_id: UUID, state: str, error: str | None) -> None:
        metrics.FILES_THUMBNAILS.labels(state).inc()
        await self._state(product_id, file_id, state, error)

    async def _state(
        self, product_id: int, file_id: UUID, state: str, error: str | None = None
    ) -> None:
        await self.db.write(images_sql.set_thumbnail_state, product_id, file_id, state, error)


class ProductImages(Actor):
    """Owns its database pools and a file store, and the in-process thumbnail jobs."""

    def __init__(self, settings: Settings, replicas: ReplicaSet, files: ActorRef[Files]) -> None:
        self.settings = settings
        self.replicas = replicas
        self.files = files
        self.db: Database
        self.jobs: ThumbnailJobs
        self._resources = AsyncExitStack()

    async def on_start(self) -> None:
        s = self.settings
        try:
            self.db = await self._resources.enter_async_context(
                pools.database(s, self.replicas, "product-images", size=max(2, s.db_pool_size // 2))
            )
            store = await self._resources.enter_async_context(open_store(s))
        except BaseException:
            await self._resources.aclose()
            raise
        self.jobs = ThumbnailJobs(self.db, store, s)
        await self.jobs.resume()

    async def on_stop(self) -> None:
        await self.jobs.close()
        await self._resources.aclose()

    @handler
    async def attach(self, message: AttachImage) -> ProductImage:
        file = await self.files.ask(FindFile(message.principal, message.file_id))
        if file.content_type not in IMAGE_TYPES:
            raise UnsupportedType(f"a product image must be an image, not {file.content_type}")
        row = await self.db.write(
            images_sql.attach, message.product_id, file.id, message.principal.user_id
        )
        if row is None:
            raise NotFound("no such product")
        self.jobs.submit(message.product_id, file.id)
        return _image(row, file.content_type)

    @handler
    async def describe(self, message: DescribeImage) -> ProductImage:
        row = await self._image_row(message.product_id)
        async with self.db.primary() as conn:
            file = await files_sql.get(conn, row["file_id"])
        if file is None:
            raise NotFound("this product has no image")
        return _image(row, file["content_type"])

    @handler
    async def image_file(self, message: ImageFile) -> FileInfo:
        row = await self._image_row(message.product_id)
        async with self.db.primary() as conn:
            if message.variant == "thumbnail":
                file = await files_sql.variant_of(conn, row["file_id"], "thumbnail")
            else:
                file = await files_sql.get(conn, row["file_id"])
        if file is None:
            raise NotFound(f"this product's {message.variant} is not available yet")
        return FileInfo.from_row(file)

    @handler
    async def detach(self, message: DetachImage) -> None:
        if not await self.db.write(images_sql.detach, message.product_id):
            raise NotFound("this product has no image")

    async def _image_row(self, product_id: int) -> Record:
        # The primary: an image attached a moment ago must be found (and rows are tiny).
        async with self.db.primary() as conn:
            row = await images_sql.get(conn, product_id)
        if row is None:
            raise NotFound("this product has no image")
        return row


def _image(row: Record, content_type: str) -> ProductImage:
    return ProductImage(
        product_id=row["product_id"],
        file_id=row["file_id"],
        content_type=content_type,
        thumbnail_state=row["thumbnail_state"],
        thumbnail_error=row["thumbnail_error"],
    )


PRODUCT_IMAGES = ActorKey[ProductImages]("product-images")
