"""Helpers for tests that run the service as real processes."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import aiohttp

from config import Settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that points a child process at this run's services."""
    return {
        **os.environ,
        "ENV_FILE": str(ROOT / ".env.test"),
        "DATABASE_URL": settings.primary_dsn,
        "DATABASE_REPLICA_URLS": ",".join(settings.replica_dsns),
        "REDIS_URL": settings.redis_dsn,
        "REDIS_NAMESPACE": settings.redis_namespace,
        **extra,
    }


async def wait_until_serving(url: str, process: asyncio.subprocess.Process, timeout: float = 30):
    """Poll `url` until it answers 200; fail early if the process dies."""
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
        while True:
            if process.returncode is not None:
                output = await process.stdout.read() if process.stdout else b""
                raise RuntimeError(f"exited with {process.returncode}: {output.decode()[-3000:]}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return await response.json()
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
