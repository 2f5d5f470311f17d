"""Thumbnails: made with Pillow, once per image, refused for what is not a sane image."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from PIL import Image

from actors import ActorSystem
from actors.errors import NotFound
from actors.files import FILES, DeleteFile, Files, FindFile, StoreFile
from actors.identity import Principal
from actors.runtime import ActorRef
from actors.thumbnails import ThumbnailFailed, make_thumbnail, render
from config import Settings
from storage.embedded import ServiceUrls
from storage.filestore import FileStore, open_store
from storage.postgres import Database, ReplicaSet
from tests.files_support import CSV, chunks_of, files_settings, png
from tests.people import new_email


def png_claiming(width: int, height: int) -> bytes:
    """A small real PNG whose header claims other dimensions: a decompression bomb's shape."""
    data = bytearray(png(8, 8))
    ihdr = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def test_render_fits_the_longest_side_and_keeps_the_aspect() -> None:
    webp = render(png(1200, 600), longest=320, max_pixels=10_000_000)
    with Image.open(io.BytesIO(webp)) as image:
        assert image.format == "WEBP"
        assert image.size == (320, 160)


def test_render_keeps_transparency() -> None:
    out = io.BytesIO()
    Image.new("RGBA", (50, 50), (0, 0, 0, 0)).save(out, "PNG")
    with Image.open(io.BytesIO(render(out.getvalue(), longest=32, max_pixels=10**6))) as image:
        assert image.mode == "RGBA"
        assert image.getpixel((0, 0))[3] == 0


def test_decompression_bombs_are_refused_from_their_header() -> None:
    """Over our limit: refused by dimensions. Far over it: Pillow's own guard, also refused."""
    with pytest.raises(ThumbnailFailed, match="10000x5000 pixels"):
        render(png_claiming(10_000, 5_000), longest=320, max_pixels=40_000_000)
    with pytest.raises(ThumbnailFailed, match="cannot be decoded"):
        render(png_claiming(50_000, 50_000), longest=320, max_pixels=40_000_000)


def test_garbage_is_refused() -> None:
    with pytest.raises(ThumbnailFailed, match="cannot be decoded"):
        render(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, longest=320, max_pixels=10**6)


@dataclass
class Running:
    files: ActorRef[Files]
    db: Database
    store: FileStore
    settings: Settings
    owner: Principal


@pytest.fixture
async def running(
    database: ServiceUrls, base_settings: Settings, tmp_path: Path
) -> AsyncIterator[Running]:
    """The files actor, and a database and store of the test's own (as a job worker has)."""
    settings = files_settings(database, base_settings, "local", tmp_path, None, "")
    replicas = ReplicaSet(len(settings.replica_dsns))
    async with (
        ActorSystem() as system,
        Database.open(settings.primary_dsn, [], replicas, name="test", size=2) as db,
        open_store(settings) as store,
    ):
        files = await system.spawn(FILES, lambda: Files(settings, replicas), concurrency=4)
        owner = await db.write(
            lambda conn: conn.fetchval(
                "INSERT INTO users (email, name, password_hash) VALUES ($1, 'T', 'x') RETURNING id",
                new_email(),
            )
        )
        yield Running(files, db, store, settings, Principal(str(owner), frozenset({"customer"})))


async def test_make_thumbnail_once_and_find_it_again(running: Running) -> None:
    source = await running.files.ask(StoreFile(running.owner, "cat.png", chunks_of(png(800, 800))))
    make = (running.db, running.store, running.settings, source.id)
    first = await make_thumbnail(*make)
    again = await make_thumbnail(*make)
    assert again == first
    assert first.content_type == "image/webp"
    assert first.name == "cat.thumbnail.webp"
    assert first.owner_id == running.owner.user_id
    settings = running.settings
    async with running.store.open(first.key) as reader:
        data = b"".join([chunk async for chunk in reader])
    with Image.open(io.BytesIO(data)) as image:
        assert max(image.size) == settings.files_thumbnail_pixels

    conn = await asyncpg.connect(settings.primary_dsn)
    try:
        rows = await conn.fetch("SELECT variant FROM files WHERE derived_from = $1", source.id)
    finally:
        await conn.close()
    assert [r["variant"] for r in rows] == ["thumbnail"]


async def test_only_images_get_thumbnails(running: Running) -> None:
    table = await running.files.ask(StoreFile(running.owner, "prices.csv", chunks_of(CSV)))
    with pytest.raises(ThumbnailFailed, match="not an image"):
        await make_thumbnail(running.db, running.store, running.settings, table.id)


async def test_deleting_the_image_deletes_its_thumbnail(running: Running) -> None:
    source = await running.files.ask(StoreFile(running.owner, "dog.png", chunks_of(png())))
    thumbnail = await make_thumbnail(running.db, running.store, running.settings, source.id)
    await running.files.ask(DeleteFile(running.owner, source.id))
    assert await running.store.stat(source.key) is None
    assert await running.store.stat(thumbnail.key) is None
    with pytest.raises(NotFound):
        await running.files.ask(FindFile(running.owner, thumbnail.id))
