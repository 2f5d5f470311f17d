"""Thumbnails of uploaded images as jobs: the uploads work's `make_thumbnail`, on the queue.

Submitted over the API (`POST /api/v1/jobs`) or by the product-images actor when staff attach
an image to a product. A job acts for its owner, on a file its owner may see under the files'
own rule (their own files; staff and admins: anyone's), judged when it runs, with the owner's
roles as they are then: a job naming someone else's file, or one of a staff member who has
since lost the role or been deactivated, finds no such file. The thumbnail itself belongs to
the image's owner, like any file derived from theirs.

It is idempotent by itself: a second run finds the thumbnail the first one made.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from actors.files import may_see
from actors.identity import Principal
from actors.thumbnails import ThumbnailFailed, make_thumbnail
from scheduler.context import JobContext
from scheduler.registry import PermanentFailure, job_type
from server.routing import Input
from storage import accounts as accounts_sql
from storage import files as files_sql
from storage.postgres import Connection

THUMBNAIL = "thumbnail"
MAX_USER_ID = 2**63 - 1


class ThumbnailParams(Input):
    file_id: UUID


@job_type(
    THUMBNAIL,
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
        if source is None or not await _owner_may_see(conn, ctx.owner_id, source["owner_id"]):
            raise PermanentFailure("no such file")
    try:
        made = await make_thumbnail(resources.db, resources.files, resources.settings, source["id"])
    except ThumbnailFailed as error:
        raise PermanentFailure(str(error)) from error
    return {"file_id": str(made.id), "download_url": f"/api/v1/files/{made.id}", "size": made.size}


async def _owner_may_see(conn: Connection, owner_id: str | None, file_owner: int) -> bool:
    """Whether the job's owner may see the file now (a job of the system's may see any)."""
    if owner_id is None:
        return True
    owner = await _principal_now(conn, owner_id)
    return owner is not None and may_see(owner, file_owner)


async def _principal_now(conn: Connection, user_id: str) -> Principal | None:
    """The user as an access check would see them now: their current roles, if active."""
    if not user_id.isdigit() or int(user_id) > MAX_USER_ID:
        return None
    user = await accounts_sql.user(conn, int(user_id))
    if user is None or not user["active"]:
        return None
    return Principal(user_id, frozenset(user["roles"]))
