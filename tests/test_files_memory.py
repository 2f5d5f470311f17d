"""A 200 MiB upload and download through a real server process keep its memory flat.

Memory is read from the process itself (`/proc/<pid>/status`): the peak resident set
(`VmHWM`) is reset once the server is warm, so what is measured is the peak during the
transfers, against the resident set just before them.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from config import Settings
from tests.files_support import PDF, MiB, random_bytes, upload
from tests.people import login, new_email, register
from tests.processes import ROOT, free_port, service_env, wait_until_serving

SIZE = 200 * MiB
GROWTH_LIMIT = 50 * MiB


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(value.split()[0]) * 1024
    return values


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


async def test_a_200_mib_upload_and_download_keep_server_memory_flat(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(
        settings,
        PORT=str(port),
        FILES_LOCAL_DIR=str(tmp_path / "files"),
        FILES_MAX_BYTES=str(SIZE + MiB),
    )
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "serve", "--workers", "1", cwd=ROOT, env=env
    )
    block = b"%PDF-" + random_bytes(MiB - 5)
    expected = hashlib.sha256()
    for _ in range(SIZE // MiB):
        expected.update(block)
    try:
        await wait_until_serving(f"{base}/readyz", server)
        async with aiohttp.ClientSession(base) as client:
            email, password = new_email(), secrets.token_urlsafe(12)
            await register(client, email, password)
            token = (await login(client, email, password))["access_token"]
            me = {"Authorization": f"Bearer {token}"}
            warm = await upload(client, PDF, headers=me)  # warm every code path first
            assert warm.status == 201
            assert (
                await (
                    await client.get(f"/api/v1/files/{(await warm.json())['id']}", headers=me)
                ).read()
                == PDF
            )

            before = memory(server.pid)["VmRSS"]
            reset_peak(server.pid)
            response = await upload(
                client, _blocks(block, SIZE // MiB), filename="big.pdf", headers=me
            )
            created = await response.json()
            assert response.status == 201, created
            assert created["size"] == SIZE
            assert created["sha256"] == expected.hexdigest()
            upload_growth = memory(server.pid)["VmHWM"] - before

            got = hashlib.sha256()
            received = 0
            async with client.get(f"/api/v1/files/{created['id']}", headers=me) as download:
                assert download.status == 200
                async for chunk in download.content.iter_chunked(MiB):
                    got.update(chunk)
                    received += len(chunk)
            assert received == SIZE
            assert got.hexdigest() == created["sha256"]
            growth = memory(server.pid)["VmHWM"] - before
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 20)
    assert upload_growth < GROWTH_LIMIT, f"upload grew the server by {upload_growth / MiB:.1f} MiB"
    assert growth < GROWTH_LIMIT, f"upload + download grew the server by {growth / MiB:.1f} MiB"


async def _blocks(block: bytes, count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield block
