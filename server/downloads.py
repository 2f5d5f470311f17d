"""Serving a stored file over HTTP: validators, conditional requests, single byte ranges,
a safe `Content-Disposition`, and the body streamed chunk by chunk from the file store.

* `ETag` is the content's SHA-256 (strong: files never change); `If-None-Match` gets 304.
* `Range: bytes=a-b`, `a-` and `-n` get 206 with `Content-Range`; a range that starts past the
  end gets 416 with `Content-Range: bytes */size`. Several ranges, or a malformed header, are
  ignored and the whole file is sent (RFC 9110 lets a server do so). `If-Range` with another
  validator than the current `ETag` also gets the whole file.
* The file's name is the client's data: the header carries an ASCII fallback and the exact
  name as RFC 8187 `filename*`, with any path, quote or control character neutralised.
* The body is sandboxed by its own `Content-Security-Policy`, so a file opened in a browser
  can run nothing on this origin.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web

from actors.files import CheckFile, FileInfo, Files, OpenFile
from actors.runtime import ActorRef
from observability import metrics
from server.problems import Problem, problem_response
from storage.filestore import ObjectReader, StoreError

log = logging.getLogger("backend.files")

EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "application/pdf": ".pdf",
    "text/csv": ".csv",
}
_INLINE = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_SANDBOX = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"
_CACHE = "private, no-cache"  # revalidate each time: access may have changed since
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_UNSAFE_ASCII = re.compile(r"[^A-Za-z0-9._ ()+-]")
_NOT_SATISFIABLE = Problem(416, "range-not-satisfiable", "Range not satisfiable")


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    stop: int  # exclusive


class Unsatisfiable(Exception):
    """The range asks for bytes the file does not have."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range asked for, or None to send the whole file."""
    if not header:
        return None
    match = _RANGE.match(header.replace(" ", ""))
    if match is None:
        return None  # several ranges, another unit, or malformed: send it all
    first, last = match.groups()
    if first:
        start = int(first)
        stop = size if not last else int(last) + 1
        if last and stop <= start:
            return None  # `bytes=5-2` is invalid, so the header is ignored
        if start >= size:
            raise Unsatisfiable
        return ByteRange(start, min(stop, size))
    if not last:
        return None
    suffix = int(last)
    if suffix == 0:
        raise Unsatisfiable
    return ByteRange(max(0, size - suffix), size)


def content_disposition(file: FileInfo) -> str:
    kind = "inline" if file.content_type in _INLINE else "attachment"
    fallback = f"{file.id}{EXTENSIONS.get(file.content_type, '')}"
    name = re.split(r"[\\/]", file.name)[-1].strip().lstrip(".") or fallback
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    ascii_name = _UNSAFE_ASCII.sub("_", ascii_name).strip() or fallback
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def _headers(file: FileInfo) -> dict[str, str]:
    content_type = file.content_type
    if content_type.startswith("text/"):
        content_type += "; charset=utf-8"
    return {
        "ETag": file.etag,
        "Content-Type": content_type,
        "Content-Disposition": content_disposition(file),
        "Accept-Ranges": "bytes",
        "Cache-Control": _CACHE,
        "Last-Modified": _http_date(file),
        "Content-Security-Policy": _SANDBOX,
    }


def _http_date(file: FileInfo) -> str:
    return file.created_at.strftime("%a, %d %b %Y %H:%M:%S GMT")


def _matches(header: str, etag: str) -> bool:
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


async def serve(request: web.Request, files: ActorRef[Files], file: FileInfo) -> web.StreamResponse:
    """Answer GET or HEAD for `file` (already found and access-checked by the files actor)."""
    headers = _headers(file)
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match and _matches(if_none_match, file.etag):
        return web.Response(status=304, headers={"ETag": file.etag, "Cache-Control": _CACHE})
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != file.etag:
        range_header = None
    try:
        byte_range = parse_range(range_header, file.size)
    except Unsatisfiable:
        return problem_response(
            _NOT_SATISFIABLE,
            f"the file has {file.size} bytes",
            headers={"Content-Range": f"bytes */{file.size}"},
        )
    start, stop = (0, file.size) if byte_range is None else (byte_range.start, byte_range.stop)
    response = web.StreamResponse(status=200 if byte_range is None else 206, headers=headers)
    if byte_range is not None:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{file.size}"
    if request.method == "HEAD":
        await files.ask(CheckFile(file))
        response.content_length = stop - start
        await response.prepare(request)
        await response.write_eof()
        return response
    async with await files.ask(OpenFile(file, start, stop)) as reader:
        response.content_length = reader.length
        await response.prepare(request)
        await _stream(request, response, reader)
    return response


async def _stream(request: web.Request, response: web.StreamResponse, reader: ObjectReader) -> None:
    sent = 0
    try:
        async for chunk in reader:
            await response.write(chunk)
            sent += len(chunk)
        await response.write_eof()
    except StoreError as error:
        # The status is already sent: the only honest signal left is to cut the connection
        # short, so the client sees fewer bytes than Content-Length promised.
        log.error("file store failed mid-download", extra={"error": str(error)})
        if request.transport is not None:
            request.transport.close()
    except ConnectionError:
        pass  # the client went away
    finally:
        metrics.FILES_SERVED_BYTES.inc(sent)
