"""Shared by the file tests: a real S3-compatible server (moto's standalone server, one per
session, on loopback), settings for either backend, sample files, streamed multipart bodies."""

from __future__ import annotations

import asyncio
import io
import os
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiobotocore.session import get_session
from PIL import Image

from config import Settings
from storage.embedded import ServiceUrls
from tests.conftest import settings_for
from tests.processes import ROOT, free_port

MOTO_KEYS = {"s3_access_key_id": "moto", "s3_secret_access_key": "moto"}
MiB = 1 << 20


@dataclass(frozen=True)
class S3Server:
    url: str

    def client(self) -> Any:
        return get_session().create_client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="moto",
            aws_secret_access_key="moto",
        )

    async def new_bucket(self) -> str:
        name = f"files-{secrets.token_hex(4)}"
        async with self.client() as client:
            await client.create_bucket(Bucket=name)
        return name

    async def keys(self, bucket: str) -> list[str]:
        async with self.client() as client:
            listing = await client.list_objects_v2(Bucket=bucket)
        return [item["Key"] for item in listing.get("Contents", [])]

    async def pending_uploads(self, bucket: str) -> list[dict[str, Any]]:
        async with self.client() as client:
            return (await client.list_multipart_uploads(Bucket=bucket)).get("Uploads", [])


@pytest.fixture(scope="session")
async def s3_server() -> AsyncIterator[S3Server]:
    port = free_port()
    process = _start_moto(port)
    try:
        await _wait_for(f"http://127.0.0.1:{port}/moto-api/", process)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(10)


def _start_moto(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _wait_for(url: str, process: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(30), aiohttp.ClientSession() as session:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited with {process.returncode}")
            try:
                async with session.get(url):
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)


def files_settings(
    database: ServiceUrls,
    base: Settings,
    backend: str,
    tmp: Any,
    s3: S3Server | None,
    bucket: str,
    **overrides: Any,
) -> Settings:
    """Settings for one backend: a folder of the test's own, or a bucket of its own."""
    options: dict[str, Any] = {"files_local_dir": tmp / "files", "files_max_bytes": 4 * MiB}
    if backend == "s3":
        assert s3 is not None
        options |= {
            "files_backend": "s3",
            "s3_bucket": bucket,
            "s3_endpoint_url": s3.url,
            "s3_addressing_style": "path",
            "s3_part_bytes": 5 * MiB,
            **MOTO_KEYS,
        }
    return settings_for(database, base, **(options | overrides))


# -- bodies -----------------------------------------------------------------------------------


def png(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(out, "PNG")
    return out.getvalue()


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
CSV = 'sku,name,price\nA-1,Café crème,350\nB-2,"Tea, green",280\n'.encode()


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def repeated(block: bytes, total: int) -> AsyncIterator[bytes]:
    """`total` bytes made of `block` repeated, without ever holding more than one block."""
    sent = 0
    while sent < total:
        piece = block[: total - sent]
        sent += len(piece)
        yield piece


@dataclass
class Multipart:
    """A multipart/form-data body whose file part streams from an async iterator."""

    filename: str
    content: AsyncIterator[bytes]
    part_type: str = "application/octet-stream"
    field: str = "file"
    boundary: str = ""

    def __post_init__(self) -> None:
        self.boundary = self.boundary or f"----test{secrets.token_hex(8)}"

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def head(self) -> bytes:
        """The part's headers; a name that is not plain ASCII goes as RFC 8187 `filename*`."""
        if re.fullmatch(r"[A-Za-z0-9 ._()/-]*", self.filename):
            name = f'filename="{self.filename}"'
        else:
            name = f"filename*=UTF-8''{quote(self.filename, safe='')}"
        return (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{self.field}"; {name}\r\n'
            f"Content-Type: {self.part_type}\r\n\r\n"
        ).encode()

    def tail(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode()

    async def body(self) -> AsyncIterator[bytes]:
        yield self.head()
        async for chunk in self.content:
            yield chunk
        yield self.tail()


async def upload(
    client: Any,
    data: bytes | AsyncIterator[bytes],
    *,
    filename: str = "file.bin",
    headers: dict[str, str],
    part_type: str = "application/octet-stream",
) -> Any:
    """POST /api/v1/files with a streamed (chunked) multipart body."""
    content = chunks_of(data) if isinstance(data, bytes) else data
    form = Multipart(filename, content, part_type)
    return await client.post(
        "/api/v1/files",
        data=form.body(),
        headers={**headers, "Content-Type": form.content_type},
    )


def random_bytes(size: int) -> bytes:
    return os.urandom(size)
