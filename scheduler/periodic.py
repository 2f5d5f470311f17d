"""`backend scheduler`: enqueues periodic jobs, and reports the queues' backlog.

Time is cut into periods of each schedule's length (aligned to the epoch); each period's job
is written with the Idempotency-Key `schedule:<name>:<period length>:<period number>`, which
the database accepts once. So however many schedulers run (two for availability, or a restart
within a period), each period's job is enqueued exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from config import Settings
from observability import metrics
from observability.exporter import serve_metrics
from scheduler import registry
from scheduler.broker import JobBroker, JobKeys
from scheduler.dispatch import Dispatcher
from scheduler.events import Publisher
from scheduler.records import Records
from storage import jobs
from storage.jobs import NewJob
from storage.postgres import Database, ReplicaSet
from storage.redis import open_redis

log = logging.getLogger("backend.scheduler")

BACKLOG_EVERY = 5.0


@dataclass(frozen=True)
class Schedule:
    name: str
    job_type: str
    every: float  # seconds
    params: dict[str, Any] = field(default_factory=dict)

    def period(self, now: float) -> int:
        return int(now // self.every)


def schedules(settings: Settings) -> list[Schedule]:
    return [Schedule("maintenance", "maintenance", settings.job_maintenance_interval)]


class Scheduler:
    def __init__(self, settings: Settings, dispatcher: Dispatcher, plan: Sequence[Schedule]):
        self.settings = settings
        self.dispatcher = dispatcher
        self.plan = list(plan)
        self._done: dict[str, int] = {}

    async def tick(self, now: float) -> None:
        """Enqueue each schedule's job for the current period, unless that happened already."""
        for schedule in self.plan:
            period = schedule.period(now)
            if self._done.get(schedule.name) == period:
                continue
            created = await self._enqueue(schedule, period)
            self._done[schedule.name] = period
            log.info(
                "periodic job enqueued" if created else "periodic job already enqueued",
                extra={"schedule": schedule.name, "period": period},
            )

    async def _enqueue(self, schedule: Schedule, period: int) -> bool:
        job_type = registry.lookup(schedule.job_type)
        job = NewJob(
            id=uuid.uuid4(),
            type=job_type.name,
            topic=job_type.topic,
            owner_id=None,
            params=job_type.parse(schedule.params).model_dump(mode="json", by_alias=True),
            max_attempts=job_type.max_attempts or self.settings.job_max_attempts,
            idempotency_key=f"schedule:{schedule.name}:{schedule.every:g}:{period}",
        )
        return bool(await self.dispatcher.submit([job]))

    def next_wake(self, now: float) -> float:
        """Seconds until the earliest next period starts (at most one second, to stay alert)."""
        nearest = min((s.period(now) + 1) * s.every - now for s in self.plan)
        return max(0.01, min(1.0, nearest))


async def report_backlog(db: Database) -> None:
    rows = await db.read(jobs.backlog)
    seen = {row["topic"] for row in rows}
    for row in rows:
        metrics.JOB_QUEUE_DEPTH.labels(row["topic"]).set(row["waiting"])
        metrics.JOB_QUEUE_OLDEST.labels(row["topic"]).set(row["oldest_seconds"])
    for topic in _known_topics - seen:
        metrics.JOB_QUEUE_DEPTH.labels(topic).set(0)
        metrics.JOB_QUEUE_OLDEST.labels(topic).set(0)
    _known_topics.update(seen)


_known_topics: set[str] = set()


async def run_scheduler(settings: Settings, metrics_port: int | None) -> int:
    registry.load(settings.job_modules)
    keys = JobKeys(settings.redis_namespace)
    broker = JobBroker(settings.redis_dsn, keys, settings.job_topics, pool_size=4)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        if metrics_port is not None:
            await stack.enter_async_context(serve_metrics(metrics_port, host=settings.host))
        db = await stack.enter_async_context(
            Database.open(settings.primary_dsn, [], ReplicaSet(0), name="scheduler", size=2)
        )
        redis = await stack.enter_async_context(open_redis(settings.redis_dsn, name="scheduler"))
        stack.push_async_callback(broker.close)
        await broker.ensure_groups()
        dispatcher = Dispatcher(
            Records(db, Publisher(redis, keys.events)), broker, settings.job_max_attempts
        )
        scheduler = Scheduler(settings, dispatcher, schedules(settings))
        log.info("scheduler started", extra={"schedules": [s.name for s in scheduler.plan]})
        next_backlog = 0.0
        while not stop.is_set():
            now = time.time()
            try:
                await scheduler.tick(now)
                if time.monotonic() >= next_backlog:
                    next_backlog = time.monotonic() + BACKLOG_EVERY
                    await report_backlog(db)
            except Exception:
                log.exception("scheduler tick failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), scheduler.next_wake(time.time()))
    log.info("scheduler stopped")
    return 0
