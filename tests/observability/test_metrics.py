"""Metrics that add up: one scrape of a multi-process API reports the sum, process figures
are exported per target, pools report their size and waits, other processes have a port."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from config import Settings
from observability import metrics
from observability.exporter import serve_metrics
from server.app import create_app
from storage.postgres import Connection, Database, ReplicaSet
from tests.conftest import eventually
from tests.observability.conftest import Group, counts_by_process, scrape, total
from tests.processes import free_port

REQUESTS = 120


async def test_one_scrape_reports_the_sum_over_every_process(api_group: Group) -> None:
    await api_group.hit_livez(REQUESTS)

    # Each process writes its counts within a second (metrics.FLUSH_INTERVAL).
    async def all_counted() -> bool:
        return await api_group.scraped_livez() == api_group.livez_served

    await eventually(all_counted)
    per_process = counts_by_process(api_group.metrics_dir, "http_requests_total", route="/livez")
    assert len([pid for pid, count in per_process.items() if count > 0]) == 2, per_process
    assert sum(per_process.values()) == api_group.livez_served
    samples = await scrape(f"{api_group.base}/metrics")
    assert total(samples, "http_requests_total", route="/livez", status="200") == (
        api_group.livez_served
    )
    assert total(samples, "http_request_duration_seconds_count", route="/livez") == (
        api_group.livez_served
    )


async def test_process_figures_cover_every_process(api_group: Group) -> None:
    samples = await scrape(f"{api_group.base}/metrics")
    assert total(samples, "backend_processes") == 2
    memory = total(samples, "process_resident_memory_bytes")
    largest = total(samples, "process_largest_resident_memory_bytes")
    assert 0 < largest < memory  # two processes summed, the biggest one alone
    assert total(samples, "process_cpu_seconds_total") > 0
    assert total(samples, "process_open_fds") > 20
    assert total(samples, "process_max_fds") >= 1024
    assert time.time() - 600 < total(samples, "process_start_time_seconds") <= time.time()
    # Each process's health actor has a pool of 2 to the primary and to the replica: the sum.
    assert total(samples, "db_pool_max_connections", pool="health", target="primary") == 4
    assert total(samples, "db_pool_max_connections", pool="health", target="replica0") == 4
    assert total(samples, "db_pool_connections", pool="health", target="primary") >= 1
    assert total(samples, "db_replica_up", replica="replica0") == 1


async def test_a_dead_process_leaves_the_live_sums_and_keeps_its_counts(api_group: Group) -> None:
    await api_group.hit_livez(10)

    async def all_counted() -> bool:
        return await api_group.scraped_livez() == api_group.livez_served

    await eventually(all_counted)
    started = total(await scrape(f"{api_group.base}/metrics"), "process_start_time_seconds")
    victim = api_group.children()[0]

    os.kill(victim, signal.SIGKILL)

    async def replaced() -> bool:
        return victim not in api_group.children() and api_group.all_listening(2)

    await eventually(replaced, timeout=20)
    assert not list(api_group.metrics_dir.glob(f"gauge_live*_{victim}.db"))

    async def both_report() -> bool:
        samples = await scrape(f"{api_group.base}/metrics")
        return total(samples, "backend_processes") == 2

    await eventually(both_report, timeout=20)
    samples = await scrape(f"{api_group.base}/metrics")
    # The killed process's requests still count: counters are totals over every process.
    assert total(samples, "http_requests_total", route="/livez") == api_group.livez_served
    assert total(samples, "process_start_time_seconds") > started  # the newest start


async def _sleep(conn: Connection, seconds: float) -> None:
    await conn.execute("SELECT pg_sleep($1)", seconds)


async def test_pools_report_connections_in_use_and_the_wait_for_one(
    settings: Settings, client: TestClient
) -> None:
    async with Database.open(
        settings.primary_dsn, [], ReplicaSet(0), name="pooltest", size=1
    ) as db:
        holding = asyncio.create_task(db.write(_sleep, 0.3))
        await asyncio.sleep(0.1)
        waiting = asyncio.create_task(db.write(_sleep, 0))  # queues behind the only connection

        text = await (await client.get("/metrics")).text()
        assert 'db_pool_connections{pool="pooltest",state="in_use",target="primary"} 1.0' in text
        assert 'db_pool_max_connections{pool="pooltest",target="primary"} 1.0' in text
        await asyncio.gather(holding, waiting)

    text = await (await client.get("/metrics")).text()
    assert 'db_pool_connections{pool="pooltest",state="in_use",target="primary"} 0.0' in text
    assert 'db_pool_wait_seconds_count{pool="pooltest",target="primary"} 2.0' in text
    # The second caller waited about 0.2 s: not within 0.1 s, within 0.25 s.
    assert 'db_pool_wait_seconds_bucket{le="0.1",pool="pooltest",target="primary"} 1.0' in text
    assert 'db_pool_wait_seconds_bucket{le="0.25",pool="pooltest",target="primary"} 2.0' in text


async def test_a_closed_pool_reports_zero(settings: Settings, client: TestClient) -> None:
    async with Database.open(settings.primary_dsn, [], ReplicaSet(0), name="closedtest", size=3):
        text = await (await client.get("/metrics")).text()
        assert 'db_pool_max_connections{pool="closedtest",target="primary"} 3.0' in text
    text = await (await client.get("/metrics")).text()
    assert 'db_pool_max_connections{pool="closedtest",target="primary"} 0.0' in text
    assert 'db_pool_connections{pool="closedtest",state="idle",target="primary"} 0.0' in text


async def test_a_process_without_the_api_serves_its_own_metrics() -> None:
    port = free_port()
    async with serve_metrics(port):
        samples = await scrape(f"http://127.0.0.1:{port}/metrics")
    assert total(samples, "backend_processes") == 1
    assert total(samples, "process_resident_memory_bytes") > 0
    with pytest.raises(aiohttp.ClientConnectionError):
        await scrape(f"http://127.0.0.1:{port}/metrics")  # closed with the block


async def test_metrics_switched_off_record_nothing(
    settings: Settings, aiohttp_client, client: TestClient
) -> None:
    def livez(text: str) -> float:
        line = next(
            (
                line
                for line in text.splitlines()
                if line.startswith("http_requests_total{") and 'route="/livez"' in line
            ),
            "x 0",
        )
        return float(line.split()[-1])

    before = livez(await (await client.get("/metrics")).text())
    metrics.configure(enabled=False)
    try:
        quiet = await aiohttp_client(await create_app(settings))
        for _ in range(3):
            assert (await quiet.get("/livez")).status == 200
    finally:
        metrics.configure(enabled=True)
    assert livez(await (await client.get("/metrics")).text()) == before
    await client.get("/livez")
    assert livez(await (await client.get("/metrics")).text()) == before + 1
