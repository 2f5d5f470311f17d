"""`backend worker --topics a,b`: a process that runs the jobs of some topics.

It reads its topics' streams through taskiq's receiver (at most `JOB_CONCURRENCY` jobs at once)
and, beside it, keeps its deliveries and leases alive, moves delayed jobs that are due, trims
the streams, and listens for cancels.

SIGTERM or SIGINT: stop taking deliveries at once; let running jobs finish for up to
`JOB_SHUTDOWN_TIMEOUT`; cancel the rest and hand them back to the queue (their record goes back
to `queued`, their message to the end of its stream) together with deliveries fetched but not
started; then close, every step bounded in time, so the process always exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from uuid import UUID

import orjson
from redis.asyncio import Redis
from taskiq.receiver import Receiver

from actors import ActorSystem, pools
from actors.health import HEALTH, HealthMonitor
from config import ConfigError, Settings
from observability.exporter import serve_metrics
from scheduler import registry
from scheduler.broker import JobBroker, JobKeys
from scheduler.context import Resources
from scheduler.events import Publisher
from scheduler.execution import JobRunner
from scheduler.records import Records
from scheduler.tracing import LabelsMiddleware
from storage.filestore import open_store
from storage.postgres import ReplicaSet
from storage.redis import open_redis

log = logging.getLogger("backend.jobs")

TRIM_EVERY = 30.0
CLOSE_TIMEOUT = 5.0


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Worker:
    settings: Settings
    broker: JobBroker
    runner: JobRunner
    redis: Redis

    async def serve(self, stop: asyncio.Event) -> None:
        s = self.settings
        receiver = Receiver(
            self.broker,
            max_async_tasks=s.job_concurrency,
            max_prefetch=0,
            run_startup=False,
            wait_tasks_timeout=s.job_shutdown_timeout,
        )
        async with (
            _background(
                ("heartbeat", self._heartbeat, s.job_heartbeat_interval),
                ("delayed", self.broker.move_due, s.job_poll_interval),
                ("trim", self.broker.trim, TRIM_EVERY),
            ),
            self._cancels(),
        ):
            log.info("worker started", extra={"topics": self.broker.topics})
            await receiver.listen(stop)
            await self._return_unfinished()

    async def _heartbeat(self) -> None:
        lost = await self.broker.heartbeat()
        if lost:
            log.warning("deliveries taken over by another worker", extra={"count": len(lost)})
        await self.runner.extend_leases()

    async def _return_unfinished(self) -> None:
        """Hand back what did not finish in time, and what was fetched but never started."""
        returned = self.runner.return_all()
        if returned:
            log.warning("returning unfinished jobs to the queue", extra={"count": returned})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT * 2):
                while self.runner.active:  # their outcome is recorded, then they hand back
                    await asyncio.wait(set(self.runner.active))
                await self.runner.drain()
        for delivery in list(self.broker.in_flight.values()):
            await self.broker.give_back(delivery)

    @contextlib.asynccontextmanager
    async def _cancels(self) -> AsyncIterator[None]:
        """Cancel requests, announced by the API processes on the control channel."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.broker.keys.control)

        async def listen() -> None:
            async for message in pubsub.listen():
                command = orjson.loads(message["data"])
                if "cancel" in command:
                    self.runner.cancel(UUID(command["cancel"]))

        task = asyncio.create_task(listen(), name="worker:cancels")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await pubsub.aclose()


@contextlib.asynccontextmanager
async def _background(
    *loops: tuple[str, Callable[[], Awaitable[object]], float],
) -> AsyncIterator[None]:
    async def every(name: str, step: Callable[[], Awaitable[object]], interval: float) -> None:
        while True:
            try:
                await step()
            except Exception:
                log.exception("worker loop failed; going on", extra={"loop": name})
            await asyncio.sleep(interval)

    tasks = [asyncio.create_task(every(*loop), name=f"worker:{loop[0]}") for loop in loops]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_worker(settings: Settings, topics: list[str], metrics_port: int | None) -> int:
    unknown = sorted(set(topics) - set(settings.job_topics))
    if unknown:
        raise ConfigError(f"unknown topics {unknown}: JOB_TOPICS lists {settings.job_topics}")
    registry.load(settings.job_modules)
    logging.getLogger("taskiq").setLevel(logging.WARNING)  # a line per job is too many
    name = worker_name()
    keys = JobKeys(settings.redis_namespace)
    broker = JobBroker(
        settings.redis_dsn,
        keys,
        topics,
        consumer=name,
        claim_timeout=settings.job_claim_timeout,
        reclaim_interval=settings.job_reclaim_interval,
        fetch=min(settings.job_concurrency, 64),
        pool_size=settings.job_concurrency + 8,
    )
    broker.add_middlewares(LabelsMiddleware())
    broker.is_worker_process = True
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    replicas = ReplicaSet(len(settings.replica_dsns))
    async with AsyncExitStack() as stack:
        if metrics_port is not None:
            await stack.enter_async_context(serve_metrics(metrics_port, host=settings.host))
        system = await stack.enter_async_context(ActorSystem(stop_timeout=CLOSE_TIMEOUT))
        await system.spawn(HEALTH, lambda: HealthMonitor(settings, replicas))
        db = await stack.enter_async_context(
            pools.database(
                settings,
                replicas,
                "worker",
                command_timeout=None,  # reports stream as long as needed
            )
        )
        redis = await stack.enter_async_context(
            open_redis(settings.redis_dsn, name="worker", size=settings.redis_pool_size)
        )
        stack.push_async_callback(_close, broker)
        records = Records(db, Publisher(redis, keys.events))
        files = await stack.enter_async_context(open_store(settings))
        runner = JobRunner(settings, broker, records, Resources(settings, db, redis, files), name)
        runner.register()
        await broker.startup()
        await Worker(settings, broker, runner, redis).serve(stop)
    log.info("worker stopped", extra={"worker": name})
    return 0


async def _close(broker: JobBroker) -> None:
    """Closing never hangs the exit (a blocked read on shutdown is not waited for)."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await broker.shutdown()
    except Exception as error:
        log.warning("closing the broker: %r", error)
