"""The service as real processes: graceful shutdown, replica failover, `backend up`."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from config import Settings
from server.app import create_app
from storage.embedded import EmbeddedServices
from storage.postgres import Database, ReplicaSet
from tests.conftest import Stoppable, eventually, fresh_database, settings_for
from tests.processes import ROOT, free_port, service_env, wait_until_serving


async def test_sigterm_finishes_in_flight_requests_then_exits(settings: Settings) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.slow_server",
        cwd=ROOT,
        env=service_env(settings, PORT=str(port), DRAIN_SECONDS="0.5", SHUTDOWN_TIMEOUT="10"),
    )
    try:
        await wait_until_serving(f"{base}/readyz", server)
        async with aiohttp.ClientSession() as session:

            async def slow() -> tuple[int, dict]:
                async with session.get(f"{base}/test/slow", params={"seconds": "1.5"}) as r:
                    return r.status, await r.json()

            in_flight = [asyncio.create_task(slow()) for _ in range(10)]
            await asyncio.sleep(0.3)
            server.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)

            async with aiohttp.ClientSession() as fresh, fresh.get(f"{base}/readyz") as ready:
                assert ready.status == 503  # draining: load balancers take us out first
                assert (await ready.json())["status"] == "draining"

            await asyncio.sleep(0.8)  # past the drain window, requests still in flight
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as late:
                    await late.get(f"{base}/livez")

            results = await asyncio.gather(*in_flight)
        assert results == [(200, {"slept": 1.5})] * 10
        assert await asyncio.wait_for(server.wait(), 15) == 0
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()


@pytest.fixture
async def stoppable_client(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    base_settings: Settings,
    stoppable: Stoppable,
) -> AsyncIterator[tuple[TestClient, Settings]]:
    """An app on a database of its own on the services a test may stop, and its settings."""
    async with fresh_database(stoppable.urls) as urls:
        settings = settings_for(urls, base_settings)
        yield await aiohttp_client(await create_app(settings)), settings


async def test_reads_fall_back_to_primary_while_the_replica_is_down(
    stoppable_client: tuple[TestClient, Settings], stoppable: Stoppable
) -> None:
    client, settings = stoppable_client
    embedded = stoppable.embedded

    async def readiness() -> dict:
        async with client.get("/readyz") as response:
            return await response.json()

    replicas = ReplicaSet(1)
    replicas.record(0, replay_lsn=0)
    async with Database.open(
        settings.primary_dsn, settings.replica_dsns, replicas, name="failover", size=1
    ) as db:
        embedded.stop(("replica",))
        try:
            await eventually(lambda: _reads_on(readiness, "primary (no healthy replica)"))
            body = await readiness()
            assert body["status"] == "degraded"  # still ready: the primary serves reads
            assert body["checks"]["replicas"][0]["up"] is False
            assert REGISTRY.get_sample_value("db_replica_up", {"replica": "replica0"}) == 0

            standby = await db.read(lambda conn: conn.fetchval("SELECT pg_is_in_recovery()"))
            assert standby is False  # the read was answered by the primary
            assert replicas.states[0].up is False
        finally:
            embedded.start(("replica",))
    await eventually(lambda: _reads_on(readiness, "replica"), timeout=20)


async def _reads_on(readiness, target: str) -> bool:
    return (await readiness())["reads"] == target


async def test_backend_up_serves_and_ctrl_c_stops_everything() -> None:
    state = ROOT / ".run" / "up-test"
    shutil.rmtree(state, ignore_errors=True)
    port = free_port()
    env = {
        "ENV_FILE": str(ROOT / ".env.test"),
        "STATE_DIR": str(state),
        "PORT": str(port),
        "WORKERS": "2",
        "PATH": "/usr/bin:/bin",
    }
    up = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        "up",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        ready = await wait_until_serving(f"http://127.0.0.1:{port}/readyz", up, timeout=60)
        assert ready["status"] == "ready"
        assert ready["checks"]["replicas"][0]["up"] is True
        services = EmbeddedServices(state)
        assert services.running()
        assert stat.S_IMODE((state / "services.json").stat().st_mode) == 0o600
        ports = json.loads((state / "services.json").read_text())

        up.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(up.wait(), 30) == 0
        assert not any(s.running for s in services.status())
        output = (await up.stdout.read()).decode()
        assert ports["pg_password"] not in output
        assert ports["redis_password"] not in output

        # Starting again reuses the state: same ports, same data.
        again = services.start()
        assert again.database_url.endswith(f":{ports['primary_port']}/backend")
        services.stop()
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
        EmbeddedServices(state).stop()
        shutil.rmtree(state, ignore_errors=True)
