"""Rows for background jobs and live updates.

* Jobs per second end to end (submitted over HTTP to `succeeded` in the database) for a no-op
  job, with 1 and 2 worker processes, beside bare taskiq-redis on the same number of processes
  (stream broker, no records, no events): the cost of durable jobs.
* WebSocket push latency from a job's state change (its event's commit time) to the client,
  p50/p99, with 1,000 clients connected, each following its own jobs.
* Memory of 10,000 idle authenticated WebSocket connections on one server process.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from redis.asyncio import Redis

from actors.tokens import AccessTokens
from bench.harness import Load, Row, process
from bench.run import Bench, environment
from bench.taskiq_ceiling import broker_for
from tests.processes import free_port

JOBS = 3000
SUBMITTERS = 64
JOBS_TARGET = 500.0  # jobs/s
PUSH_CLIENTS = 1000
PUSH_TARGET_MS = 50.0
IDLE_CLIENTS = 10_000
IDLE_TARGET_KIB = 40.0
SERVER_ENV = {
    "JOB_MODULES": "bench.job_types",
    "RATE_LIMIT_ENABLED": "false",
    "WS_MAX_CONNECTIONS_PER_USER": "8",
}
WORKER_ENV = {**SERVER_ENV, "JOB_CONCURRENCY": "64"}


def rows(bench: Bench) -> list[Row]:
    found = []
    with bench.variant(**SERVER_ENV) as server:
        for workers in (1, 2):
            found.append(_throughput(bench, server, workers))
        found.append(_push_latency(bench, server))
    _idle_memory(bench)
    return found


# -- processes -------------------------------------------------------------------------------


@contextlib.contextmanager
def _processes(bench: Bench, name: str, argv: list[str], count: int) -> Iterator[None]:
    """`count` processes of `argv`, each ready once it serves metrics on its `--metrics-port`."""
    env = {**environment(bench.settings, 0, 1), **WORKER_ENV}
    with contextlib.ExitStack() as stack:
        for i in range(count):
            port = free_port()
            stack.enter_context(
                process(
                    [*argv, "--metrics-port", str(port)],
                    env,
                    f"http://127.0.0.1:{port}/metrics",
                    bench.settings.state_dir / f"bench-{name}-{i}.log",
                )
            )
        yield


def _workers(bench: Bench, count: int) -> contextlib.AbstractContextManager[None]:
    argv = [sys.executable, "-m", "server.cli", "worker", "--topics", "default"]
    return _processes(bench, "worker", argv, count)


def _ceiling_workers(
    bench: Bench, count: int, stream: str, counter: str
) -> contextlib.AbstractContextManager[None]:
    argv = [sys.executable, "-m", "bench.taskiq_ceiling", bench.settings.redis_dsn]
    return _processes(bench, "ceiling-worker", [*argv, stream, counter], count)


def _token(bench: Bench, user: str, tokens: AccessTokens | None = None) -> str:
    issuer = tokens or AccessTokens.from_settings(bench.settings)
    return issuer.issue(user, ["customer"]).token


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


# -- jobs per second -------------------------------------------------------------------------


def _throughput(bench: Bench, server: str, workers: int) -> Row:
    with _workers(bench, workers):
        load = asyncio.run(_submit_and_wait(bench, server, JOBS))
    stream, counter = f"bench:ceiling:{uuid.uuid4().hex}", f"bench:ceiling:{uuid.uuid4().hex}"
    with _ceiling_workers(bench, workers, stream, counter):
        top = asyncio.run(_bare_taskiq(bench, stream, counter, JOBS))
    row = Row(f"jobs/s end to end, {workers} worker(s) vs taskiq", SUBMITTERS, load, top)
    print(row.line(), flush=True)
    verdict = "ok" if load.rps >= JOBS_TARGET else "BELOW TARGET"
    print(f"{'':<44} durable jobs/s {load.rps:.0f} (target >= {JOBS_TARGET:.0f}): {verdict}")
    return row


async def _submit_and_wait(bench: Bench, server: str, count: int) -> Load:
    token = _token(bench, f"bench-{uuid.uuid4().hex[:8]}")
    headers = {"Authorization": f"Bearer {token}"}
    body = {"type": "bench_noop"}
    ids: list[str] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)

    async def submitter(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while not queue.empty():
            queue.get_nowait()
            async with session.post(f"{server}/api/v1/jobs", json=body, headers=headers) as r:
                if r.status == 202:
                    ids.append((await r.json())["id"])
                else:
                    errors += 1

    conn = await asyncpg.connect(bench.settings.primary_dsn)
    try:
        connector = aiohttp.TCPConnector(limit=SUBMITTERS)
        async with aiohttp.ClientSession(connector=connector) as session:
            started = time.perf_counter()
            await asyncio.gather(*(submitter(session) for _ in range(SUBMITTERS)))
        while await _unfinished(conn, ids):  # noqa: ASYNC110 - polling the database
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        latencies = await conn.fetch(
            "SELECT extract(epoch FROM finished_at - created_at)::float8 * 1000 AS ms, state "
            "FROM jobs WHERE id = ANY($1::uuid[])",
            ids,
        )
    finally:
        await conn.close()
    ms = [row["ms"] for row in latencies]
    failed = errors + sum(row["state"] != "succeeded" for row in latencies)
    return Load(len(ids) / elapsed, _percentile(ms, 0.5), _percentile(ms, 0.99), failed, count)


async def _unfinished(conn: asyncpg.Connection, ids: list[str]) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND finished_at IS NULL", ids
    )


async def _bare_taskiq(bench: Bench, stream: str, counter: str, count: int) -> Load:
    broker = broker_for(bench.settings.redis_dsn, stream)
    kicker = broker.task(task_name="ceiling_noop")(_never_called)
    redis = Redis.from_url(bench.settings.redis_dsn)
    await broker.startup()
    try:
        queue = list(range(count))

        async def sender() -> None:
            while queue:
                queue.pop()
                await kicker.kiq(time.time())

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(SUBMITTERS)))
        while await redis.llen(counter) < count:  # noqa: ASYNC110 - polling Redis
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        ms = [float(value) for value in await redis.lrange(counter, 0, -1)]
    finally:
        await broker.shutdown()
        await redis.delete(counter, stream)
        await redis.aclose()
    return Load(count / elapsed, _percentile(ms, 0.5), _percentile(ms, 0.99), 0, count)


async def _never_called(sent: float) -> None:
    """Stands for the ceiling workers' task on the sending side (only its name is used)."""


# -- WebSocket push latency ------------------------------------------------------------------


def _push_latency(bench: Bench, server: str) -> Row:
    with _workers(bench, 1):
        load = asyncio.run(_follow(bench, server))
    row = Row(f"WebSocket push, {PUSH_CLIENTS} clients (events/s)", PUSH_CLIENTS, load, None)
    print(row.line(), flush=True)
    verdict = "ok" if load.p99_ms < PUSH_TARGET_MS else "BELOW TARGET"
    print(f"{'':<44} push p99 {load.p99_ms:.1f} ms (target < {PUSH_TARGET_MS:.0f} ms): {verdict}")
    return row


async def _follow(bench: Bench, server: str) -> Load:
    tokens = AccessTokens.from_settings(bench.settings)
    users = [f"bench-push-{uuid.uuid4().hex[:8]}-{i}" for i in range(PUSH_CLIENTS)]
    auth = {user: {"Authorization": f"Bearer {_token(bench, user, tokens)}"} for user in users}
    latencies: list[float] = []
    all_seen = asyncio.Event()
    expected = 3 * len(users)  # queued, running, succeeded
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets = await _connect_all(session, server, [auth[u] for u in users], subscribe=True)

        async def reader(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for message in ws:
                event = message.json()
                if event.get("type") == "job":
                    latencies.append((time.time() - event["at"]) * 1000)
                    if len(latencies) >= expected:
                        all_seen.set()

        readers = [asyncio.create_task(reader(ws)) for ws in sockets]
        started = time.perf_counter()
        for user in users:  # one job each, at a steady pace
            async with session.post(
                f"{server}/api/v1/jobs", json={"type": "bench_noop"}, headers=auth[user]
            ):
                pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_seen.wait(), 60)
        elapsed = time.perf_counter() - started
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
    missing = expected - len(latencies)
    return Load(
        len(latencies) / elapsed,
        statistics.median(latencies) if latencies else 0.0,
        _percentile(latencies, 0.99),
        missing,
        expected,
    )


async def _connect_all(
    session: aiohttp.ClientSession,
    server: str,
    headers: list[dict[str, str]],
    *,
    subscribe: bool,
) -> list[aiohttp.ClientWebSocketResponse]:
    gate = asyncio.Semaphore(200)

    async def connect(header: dict[str, str]) -> aiohttp.ClientWebSocketResponse:
        async with gate:
            ws = await session.ws_connect(f"{server}/api/v1/ws", headers=header, heartbeat=None)
            ready = await ws.receive_json()
            assert ready["type"] == "ready", ready
            if subscribe:
                await ws.send_json({"op": "subscribe", "mine": True})
                assert (await ws.receive_json())["type"] == "subscribed"
            return ws

    return list(await asyncio.gather(*(connect(h) for h in headers)))


# -- idle connections ------------------------------------------------------------------------


def _idle_memory(bench: Bench) -> None:
    port = free_port()
    env = {**environment(bench.settings, port, 1), **SERVER_ENV}
    server = f"http://127.0.0.1:{port}"
    with process(
        [sys.executable, "-m", "server.cli", "serve", "--workers", "1"],
        env,
        f"{server}/readyz",
        bench.settings.state_dir / "bench-idle-server.log",
    ) as proc:
        per_connection = asyncio.run(_measure_idle(bench, server, proc.pid))
    verdict = "ok" if per_connection < IDLE_TARGET_KIB else "BELOW TARGET"
    print(
        f"{f'{IDLE_CLIENTS} idle WebSockets, one process':<44} "
        f"{per_connection:.1f} KiB per connection (target < {IDLE_TARGET_KIB:.0f}): {verdict}",
        flush=True,
    )


async def _measure_idle(bench: Bench, server: str, pid: int) -> float:
    tokens = AccessTokens.from_settings(bench.settings)
    headers: list[dict[str, Any]] = [
        {"Authorization": f"Bearer {_token(bench, f'bench-idle-{i}', tokens)}"}
        for i in range(IDLE_CLIENTS)
    ]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm = await _connect_all(session, server, headers[:100], subscribe=False)
        await asyncio.sleep(1)
        before = _rss_kib(pid)
        rest = await _connect_all(session, server, headers[100:], subscribe=False)
        await asyncio.sleep(2)
        after = _rss_kib(pid)
        for ws in warm + rest:
            await ws.close()
    return (after - before) / (IDLE_CLIENTS - 100)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")
