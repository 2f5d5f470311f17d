"""File uploads: `POST /api/v1/files` (multipart, field `file`), `GET`/`HEAD`/`DELETE`
`/api/v1/files/{file_id}`.

The upload's body is never read whole: the `file` part is handed to the files actor as a
stream of chunks, which it counts, hashes and types on their way to the store. The endpoint
is long-lived (a big file takes longer than `REQUEST_TIMEOUT`; the upload has
`FILES_UPLOAD_TIMEOUT` instead) and has its own body limit, `FILES_MAX_BYTES` plus room for
the multipart envelope, in place of `MAX_BODY_BYTES`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from uuid import UUID

import pydantic
from aiohttp import BodyPartReader, ClientPayloadError, MultipartReader, web

from actors.errors import ClientGone, FieldError, InvalidInput, Unauthenticated, UnsupportedType
from actors.files import FILES, DeleteFile, FindFile, StoreFile
from actors.identity import Principal
from actors.runtime import deadline_scope
from config import Settings
from server.downloads import serve
from server.routing import Routes, json_response
from server.state import ACTORS, PRINCIPAL, SETTINGS
from storage.filestore import CHUNK_BYTES

routes = Routes("/api/v1", tag="files")

FIELD = "file"
ENVELOPE_BYTES = 64 * 1024  # boundaries and part headers around the file in a multipart body
_PLAIN_ENCODINGS = frozenset({"", "binary", "8bit", "7bit"})


class StoredFile(pydantic.BaseModel):
    """What the client learns of a stored file (read from a `FileInfo`)."""

    model_config = pydantic.ConfigDict(from_attributes=True)

    id: UUID
    size: int
    sha256: str
    content_type: str
    name: str
    created_at: datetime


def upload_limit(settings: Settings) -> int:
    return settings.files_max_bytes + ENVELOPE_BYTES


@routes.post("/files", access="files:write", status=201, long_lived=True, max_body=upload_limit)
async def upload_file(request: web.Request) -> StoredFile:
    """Upload a file (multipart/form-data, one part named `file`)."""
    principal = principal_of(request)
    settings = request.app[SETTINGS]
    part, reader = await _file_part(request)
    file = await request.app[ACTORS][FILES].ask(
        StoreFile(principal, part.filename, _chunks(part, reader)),
        timeout=settings.files_upload_timeout,
    )
    return json_response(  # type: ignore[return-value]
        StoredFile.model_validate(file),
        status=201,
        headers={"Location": f"/api/v1/files/{file.id}"},
    )


@routes.get("/files/{file_id}", access="files:read", long_lived=True)
async def download_file(request: web.Request, file_id: UUID) -> web.StreamResponse:
    """The file's bytes (single ranges, conditional requests); streamed."""
    files = request.app[ACTORS][FILES]
    with deadline_scope(request.app[SETTINGS].request_timeout):
        file = await files.ask(FindFile(principal_of(request), file_id))
    return await serve(request, files, file)


routes.route("HEAD", "/files/{file_id}", access="files:read", name="head_file")(download_file)


@routes.delete("/files/{file_id}", access="files:write", status=204)
async def delete_file(request: web.Request, file_id: UUID) -> web.Response:
    """Delete a file (its owner, or staff)."""
    await request.app[ACTORS][FILES].ask(DeleteFile(principal_of(request), file_id))
    return web.Response(status=204)


def principal_of(request: web.Request) -> Principal:
    principal = request.get(PRINCIPAL)
    if principal is None:
        raise Unauthenticated("sign in to use files")
    return principal


async def _file_part(request: web.Request) -> tuple[BodyPartReader, MultipartReader]:
    """The body's first part, which must be the file."""
    if request.content_type != "multipart/form-data":
        raise UnsupportedType("send the file as multipart/form-data, in a part named 'file'")
    try:
        reader = await request.multipart()
        part = await reader.next()
    except ValueError as error:
        raise InvalidInput(f"malformed multipart body: {error}") from None
    except (ClientPayloadError, ConnectionError):
        raise ClientGone("the upload was cut short") from None
    if not isinstance(part, BodyPartReader) or part.name != FIELD:
        raise InvalidInput(
            "the body must hold one part, named 'file'",
            [_field_error("the first part must be the file, named 'file'")],
        )
    encoding = part.headers.get("Content-Transfer-Encoding", "").lower()
    if encoding not in _PLAIN_ENCODINGS:
        raise InvalidInput("send the file's bytes as they are (no Content-Transfer-Encoding)")
    return part, reader


async def _chunks(part: BodyPartReader, reader: MultipartReader) -> AsyncIterator[bytes]:
    """The file part's bytes as they arrive; then no other part may follow."""
    try:
        while chunk := await part.read_chunk(CHUNK_BYTES):
            yield chunk
        if await reader.next() is not None:
            raise InvalidInput(
                "the body must hold one part, named 'file'",
                [_field_error("unexpected part after the file")],
            )
    except ValueError as error:
        raise InvalidInput(f"malformed multipart body: {error}") from None
    except (ClientPayloadError, ConnectionError):
        raise ClientGone("the upload was cut short") from None


def _field_error(message: str) -> FieldError:
    return FieldError(FIELD, message)
