"""Thumbnails of uploaded images, made with Pillow.

`make_thumbnail` is the whole job and is idempotent: run twice (a retry, a redelivery after a
crash), it finds the thumbnail it made the first time. It needs only a database and a file
store, so it runs as well in the API process as in a job worker. The thumbnail is itself a
file: a WebP no larger than `FILES_THUMBNAIL_PIXELS` on its longest side, stored like any
upload and recorded as the `thumbnail` variant of its source, which it goes with.

Images are decoded only when their declared dimensions are within `FILES_MAX_IMAGE_PIXELS`:
a small file that claims to be 50,000 x 50,000 pixels (a decompression bomb) is refused from
its header, before any pixel is decoded. Decoding runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import warnings
from collections.abc import AsyncIterator
from pathlib import PurePath
from uuid import UUID, uuid4

from asyncpg import Record
from PIL import Image, ImageOps, UnidentifiedImageError

from actors.files import FileInfo, discard
from actors.filetypes import IMAGE_TYPES
from config import Settings
from storage import files as files_sql
from storage.filestore import FileStore, ObjectMissing, new_key
from storage.postgres import Database

VARIANT = "thumbnail"
WEBP_QUALITY = 80


class ThumbnailFailed(Exception):
    """This image cannot be made into a thumbnail however often it is tried."""


def render(data: bytes, *, longest: int, max_pixels: int) -> bytes:
    """A WebP of `data` (any image Pillow reads) fitted within `longest` x `longest`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > max_pixels:
                    raise ThumbnailFailed(
                        f"the image is {image.width}x{image.height} pixels; "
                        f"at most {max_pixels} are decoded"
                    )
                image.draft("RGB", (longest, longest))  # JPEG: decode at a reduced scale
                frame = ImageOps.exif_transpose(image)  # the first frame of an animation
                frame.thumbnail((longest, longest), Image.Resampling.LANCZOS)
                if frame.mode not in ("RGB", "RGBA"):
                    frame = frame.convert("RGBA" if _has_alpha(frame) else "RGB")
                out = io.BytesIO()
                frame.save(out, "WEBP", quality=WEBP_QUALITY, method=4)
                return out.getvalue()
    except UnidentifiedImageError as error:  # its message names a Python object: say it plainly
        raise ThumbnailFailed(
            "the image cannot be decoded: its data is not a readable image"
        ) from error
    except (Image.DecompressionBombError, OSError, SyntaxError) as error:
        raise ThumbnailFailed(f"the image cannot be decoded: {error}") from error


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("LA", "PA") or "transparency" in image.info


async def make_thumbnail(
    db: Database, store: FileStore, settings: Settings, source_id: UUID
) -> FileInfo:
    """The thumbnail of image file `source_id`, made (once) if it is not there yet."""
    async with db.primary() as conn:
        existing = await files_sql.variant_of(conn, source_id, VARIANT)
        source = None if existing else await files_sql.get(conn, source_id)
    if existing is not None:
        return FileInfo.from_row(existing)
    if source is None:
        raise ThumbnailFailed("the image file no longer exists")
    if source["content_type"] not in IMAGE_TYPES:
        raise ThumbnailFailed(f"{source['content_type']} is not an image")
    data = await _read(store, source["storage_key"])
    webp = await asyncio.to_thread(
        render,
        data,
        longest=settings.files_thumbnail_pixels,
        max_pixels=settings.files_max_image_pixels,
    )
    return await _save(db, store, source, webp)


async def _read(store: FileStore, key: str) -> bytes:
    try:
        async with store.open(key) as reader:
            return b"".join([chunk async for chunk in reader])
    except ObjectMissing:
        raise ThumbnailFailed("the image's bytes are missing from the store") from None


async def _save(db: Database, store: FileStore, source: Record, webp: bytes) -> FileInfo:
    key = new_key("files", ".webp")
    await store.put(key, _once(webp))
    try:
        made = await db.write(
            files_sql.insert,
            file_id=uuid4(),
            owner_id=source["owner_id"],
            original_name=f"{PurePath(source['original_name']).stem or 'image'}.thumbnail.webp",
            content_type="image/webp",
            size=len(webp),
            sha256=hashlib.sha256(webp).digest(),
            storage_key=key,
            derived_from=source["id"],
            variant=VARIANT,
        )
    except BaseException:
        await discard(store, key)
        raise
    if made is None:  # made meanwhile by another run, or the source went: keep theirs
        await discard(store, key)
        async with db.primary() as conn:
            made = await files_sql.variant_of(conn, source["id"], VARIANT)
        if made is None:
            raise ThumbnailFailed("the image file no longer exists")
    return FileInfo.from_row(made)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
