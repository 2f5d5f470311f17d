"""Helpers for job tests: real worker and scheduler processes, and a test-side dispatcher.

Fixtures for job test modules: `job_settings`, this module's settings on a database of its own
(a module may define its own), `jobs_api`, the app on them, and `worker`, a worker process
of every topic."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from aiohttp.test_utils import TestClient, TestServer
from asyncpg import Record
from redis.asyncio import Redis

from actors import ActorSystem
from actors.identity import Principal
from actors.jobs import JOBS, CancelJob, JobsActor, ReplayJob, SubmitJob
from actors.runtime import ActorRef
from config import Settings
from scheduler.model import Job
from server.app import create_app
from storage import jobs
from storage.embedded import ServiceUrls
from storage.postgres import Database, ReplicaSet
from storage.redis import open_redis
from tests.conftest import eventually, fresh_database, settings_for
from tests.processes import ROOT, service_env

TESTER = Principal("tester", frozenset({"customer"}))
ADMIN = Principal("admin", frozenset({"admin"}))

# Short intervals so that crash recovery and retries happen within a test's budget.
FAST = {
    "job_modules": "tests.jobs",
    "job_claim_timeout": 1.2,
    "job_heartbeat_interval": 0.3,
    "job_reclaim_interval": 0.3,
    "job_poll_interval": 0.1,
    "job_backoff_seconds": 0.4,
    "job_shutdown_timeout": 1.0,
}


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    overrides = {key.upper(): str(value) for key, value in FAST.items()}
    return service_env(settings, LOG_LEVEL="INFO", **overrides, **extra)


@dataclass
class Process:
    """A `backend worker` or `backend scheduler` process whose log goes to a file."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    ready: str
    process: asyncio.subprocess.Process | None = None

    async def start(self) -> Process:
        self.log.write_bytes(b"")
        with open(self.log, "ab") as out:  # noqa: ASYNC230 - a local log file
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server.cli",
                *self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=out,
            )

        async def started() -> bool:
            output = self.log.read_text()
            if self.ready in output:  # then it may exit at once: a poison job kills it
                return True
            if self.process is not None and self.process.returncode is not None:
                raise RuntimeError(f"exited: {output[-3000:]}")
            return False

        await eventually(started, timeout=30)
        return self

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@dataclass
class Jobs:
    """The test's side of the queue: submit jobs and read their records and events."""

    settings: Settings
    db: Database
    redis: Redis
    actor: ActorRef[JobsActor]
    tmp: Path
    processes: list[Process] = field(default_factory=list)

    def worker(self, *topics: str, **env: str) -> Process:
        argv = ["worker", *(["--topics", ",".join(topics)] if topics else [])]
        return self._process(argv, "worker started", env)

    def scheduler(self, **env: str) -> Process:
        return self._process(["scheduler"], "scheduler started", env)

    def _process(self, argv: list[str], ready: str, env: dict[str, str]) -> Process:
        name = f"{argv[0]}-{len(self.processes)}"
        process = Process(argv, env_for(self.settings, **env), self.tmp / f"{name}.log", ready)
        self.processes.append(process)
        return process

    async def submit(self, job_type: str, params: dict[str, Any] | None = None) -> UUID:
        submitted = await self.actor.ask(SubmitJob(TESTER, job_type, params or {}))
        return submitted.job.id

    async def replay(self, job_id: UUID) -> Job:
        return await self.actor.ask(ReplayJob(ADMIN, job_id))

    async def cancel(self, job_id: UUID) -> Job:
        return await self.actor.ask(CancelJob(TESTER, job_id))

    async def job(self, job_id: UUID) -> Record:
        async with self.db.primary() as conn:
            row = await jobs.get_job(conn, job_id)
        assert row is not None
        return row

    async def events(self, job_id: UUID) -> list[Record]:
        async with self.db.primary() as conn:
            return await conn.fetch(
                "SELECT seq, state, progress, message, created_at FROM job_events "
                "WHERE job_id = $1 ORDER BY seq",
                job_id,
            )

    async def until(self, job_id: UUID, *states: str, timeout: float = 20) -> Record:
        async def reached() -> bool:
            return (await self.job(job_id))["state"] in states

        await eventually(reached, timeout=timeout)
        return await self.job(job_id)

    async def runs(self, marker: str) -> int:
        return int(await self.redis.get(f"test-runs:{marker}") or 0)


@contextlib.asynccontextmanager
async def job_queue(settings: Settings, tmp: Path) -> AsyncIterator[Jobs]:
    """The jobs actor (the API's side of the queue) and a view of the records, for a test."""
    replicas = ReplicaSet(len(settings.replica_dsns))
    async with (
        Database.open(settings.primary_dsn, [], ReplicaSet(0), name="test-jobs", size=2) as db,
        open_redis(settings.redis_dsn, name="test-jobs") as redis,
        ActorSystem() as system,
    ):
        actor = await system.spawn(JOBS, lambda: JobsActor(settings, replicas), concurrency=16)
        queue = Jobs(settings, db, redis, actor, tmp)
        try:
            yield queue
        finally:
            for process in queue.processes:
                await process.stop()
            # The test Redis keeps its data across runs (append-only file): leave none behind.
            async for key in redis.scan_iter(match=f"{settings.redis_namespace}:*", count=1000):
                await redis.delete(key)


@pytest.fixture(scope="module")
async def job_settings(base_settings: Settings, services: ServiceUrls) -> AsyncIterator[Settings]:
    # A database of their own: other tests' apps (other Redis namespaces) must not relay these.
    async with fresh_database(services) as urls:
        yield settings_for(urls, base_settings, **FAST)


@pytest.fixture(scope="module")
async def jobs_api(job_settings: Settings) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(await create_app(job_settings))) as client:
        yield client


@pytest.fixture(scope="module")
async def worker(job_settings: Settings, tmp_path_factory) -> AsyncIterator[Jobs]:
    async with job_queue(job_settings, tmp_path_factory.mktemp("workers")) as queue:
        await queue.worker().start()
        yield queue
