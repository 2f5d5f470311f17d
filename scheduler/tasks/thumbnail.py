"""Thumbnails of uploaded images as jobs: the uploads work's `make_thumbnail`, on the queue.

It is idempotent by itself (a second run finds the thumbnail the first one made), and only the
image's owner may ask for it; to anyone else the file does not exist.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from actors.thumbnails import ThumbnailFailed, make_thumbnail
from scheduler.context import JobContext
from scheduler.registry import PermanentFailure, job_type
from server.routing import Input
from storage import files as files_sql


class ThumbnailParams(Input):
    file_id: UUID


@job_type(
    "thumbnail",
    topic="default",
    params=ThumbnailParams,
    permission="files:write",
    max_attempts=3,
    timeout=300,
)
async def thumbnail(ctx: JobContext, params: ThumbnailParams) -> dict[str, Any]:
    resources = ctx.resources
    async with resources.db.primary() as conn:
        source = await files_sql.get(conn, params.file_id)
    if source is None or (ctx.owner_id is not None and str(source["owner_id"]) != ctx.owner_id):
        raise PermanentFailure("no such file")
    try:
        made = await make_thumbnail(resources.db, resources.files, resources.settings, source["id"])
    except ThumbnailFailed as error:
        raise PermanentFailure(str(error)) from error
    return {"file_id": str(made.id), "download_url": f"/api/v1/files/{made.id}", "size": made.size}
