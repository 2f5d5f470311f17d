"""Product images: staff attach an uploaded image to a product; anyone may fetch it and its
thumbnail.

The thumbnail is made by a `thumbnail` job on the jobs queue (`scheduler/tasks/thumbnail.py`),
submitted through the jobs actor as `POST /api/v1/jobs` submits one, and owned by the staff
member who attached the image: its record, retries with backoff, redelivery after a crash,
dead-lettering and live events are the job system's. The image row keeps the job's id, and
the image's status is read from the job's record.

Attaching checks the caller's access to the file first (the files actor: their own files,
staff any), then that the product is live, submits the job, and only then writes the row
with the job's id: a row never names a job that was not submitted. A failure in between
leaves at most a job that makes the thumbnail of a file its owner may see, which is harmless
(the thumbnail goes with the file), and the client's retry attaches again. Attaching again,
even the same file, submits a new job (the way to try again after a failure): the one before
finds the thumbnail made, or makes it, without harm.

The job is its owner's and staff's (the jobs' own rule): the public status tells anyone the
thumbnail's state; the job itself, and the error (which may name internals), only them.
"""

from __future__ import annotations

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
from actors.jobs import JobsActor, SubmitJob, may_see_job
from actors.runtime import Actor, ActorRef, Message, handler
from actors.system import ActorKey
from config import Settings
from scheduler.model import Job, JobState
from scheduler.tasks.thumbnail import THUMBNAIL
from storage import catalog as catalog_sql
from storage import files as files_sql
from storage import jobs as jobs_sql
from storage import product_images as images_sql
from storage.postgres import Database, ReplicaSet

Variant = Literal["image", "thumbnail"]
ThumbnailState = Literal["queued", "running", "succeeded", "failed"]

# The thumbnail's state as it always read, from its job's: a retry is still on its way.
THUMBNAIL_STATES: dict[JobState, ThumbnailState] = {
    JobState.QUEUED: "queued",
    JobState.RUNNING: "running",
    JobState.RETRYING: "running",
    JobState.SUCCEEDED: "succeeded",
    JobState.FAILED: "failed",
    JobState.DEAD: "failed",
    JobState.CANCELLED: "failed",
}


@dataclass(frozen=True, slots=True)
class ProductImage:
    product_id: int
    file_id: UUID
    content_type: str
    thumbnail: ThumbnailState
    # The job making the thumbnail, for those who may see it; None for anyone else, and once
    # its record is gone (deleted after its retention, or made before thumbnails were jobs).
    job: Job | None


@dataclass(frozen=True, slots=True)
class AttachImage(Message[ProductImage]):
    principal: Principal
    product_id: int
    file_id: UUID


@dataclass(frozen=True, slots=True)
class DescribeImage(Message[ProductImage]):
    product_id: int
    principal: Principal | None  # None: an anonymous caller


@dataclass(frozen=True, slots=True)
class ImageFile(Message[FileInfo]):
    """The file to serve for a product's image or its thumbnail."""

    product_id: int
    variant: Variant


@dataclass(frozen=True, slots=True)
class DetachImage(Message[None]):
    product_id: int


class ProductImages(Actor):
    """Owns its database pools; asks the files actor for access and the jobs actor for jobs."""

    def __init__(
        self,
        settings: Settings,
        replicas: ReplicaSet,
        files: ActorRef[Files],
        jobs: ActorRef[JobsActor],
    ) -> None:
        self.settings = settings
        self.replicas = replicas
        self.files = files
        self.jobs = jobs
        self.db: Database
        self._resources = AsyncExitStack()

    async def on_start(self) -> None:
        s = self.settings
        self.db = await self._resources.enter_async_context(
            pools.database(s, self.replicas, "product-images", size=max(2, s.db_pool_size // 2))
        )

    async def on_stop(self) -> None:
        await self._resources.aclose()

    @handler
    async def attach(self, message: AttachImage) -> ProductImage:
        file = await self.files.ask(FindFile(message.principal, message.file_id))
        if file.content_type not in IMAGE_TYPES:
            raise UnsupportedType(f"a product image must be an image, not {file.content_type}")
        # The primary: a product created a moment ago must be found.
        async with self.db.primary() as conn:
            if await catalog_sql.product(conn, message.product_id) is None:
                raise NotFound("no such product")
        submitted = await self.jobs.ask(
            SubmitJob(message.principal, THUMBNAIL, {"file_id": str(file.id)})
        )
        job = submitted.job
        row = await self.db.write(
            images_sql.attach, message.product_id, file.id, message.principal.user_id, job.id
        )
        if row is None:  # deleted meanwhile
            raise NotFound("no such product")
        return ProductImage(
            row["product_id"], file.id, file.content_type, THUMBNAIL_STATES[job.state], job
        )

    @handler
    async def describe(self, message: DescribeImage) -> ProductImage:
        # The primary: an image attached, or a job finished, a moment ago must be seen.
        async with self.db.primary() as conn:
            row = await images_sql.describe(conn, message.product_id)
            if row is None:
                raise NotFound("this product has no image")
            job_row = None
            if row["thumbnail_job"] is not None:
                job_row = await jobs_sql.get_job(conn, row["thumbnail_job"])
        job = None if job_row is None else Job.from_record(job_row)
        state: ThumbnailState
        if job is not None:
            state = THUMBNAIL_STATES[job.state]
        else:  # no record left: the thumbnail file tells
            state = "succeeded" if row["thumbnail_made"] else "failed"
        caller = message.principal
        visible = job is not None and caller is not None and may_see_job(caller, job.owner_id)
        return ProductImage(
            row["product_id"], row["file_id"], row["content_type"], state, job if visible else None
        )

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


PRODUCT_IMAGES = ActorKey[ProductImages]("product-images")
