"""Getting jobs from their records into their streams, exactly once per record.

A job is first written (with its `queued` event) and committed; then it is dispatched: its
message is sent to its topic's stream (or to the delayed set, if it is due later) inside a
transaction that locks the record and marks it dispatched. A process that dies between the two
leaves the record undispatched, and the relay (every API process runs one) sends it. A record
asked for inside another transaction goes to the narrow `job_outbox` table
(`storage.jobs.ask_in_transaction`, an order's follow-up); the relay's next round (every
`JOB_POLL_INTERVAL`) turns it into a job and dispatches it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from uuid import UUID

from asyncpg import Record

from observability import metrics
from scheduler import registry
from scheduler.broker import JobBroker
from scheduler.model import Change, JobState
from scheduler.records import Records
from storage import jobs
from storage.jobs import NewJob
from storage.postgres import Connection

log = logging.getLogger("backend.jobs")

RELAY_BATCH = 500


class Dispatcher:
    def __init__(self, records: Records, broker: JobBroker, default_attempts: int) -> None:
        self.records = records
        self.broker = broker
        self.default_attempts = default_attempts

    async def submit(self, new_jobs: Sequence[NewJob]) -> list[Record]:
        """Write jobs and dispatch them; jobs refused for a repeated key are left out."""

        async def work(conn: Connection) -> tuple[list[Record], list[Change]]:
            return await _write(conn, new_jobs)

        rows = await self.records.write(work)
        if rows:
            labels = {job.id: job.labels for job in new_jobs}
            await self.dispatch([row["id"] for row in rows], labels)
        return rows

    async def dispatch(
        self, ids: Sequence[UUID] | None = None, labels: Mapping[UUID, dict[str, str]] | None = None
    ) -> int:
        """Send undispatched jobs (these `ids`, or any) to their streams, each message with its
        job's `labels`; how many were sent."""

        async def work(conn: Connection) -> tuple[int, list[Change]]:
            if ids is None:  # the relay: whatever is left, oldest first
                rows = await jobs.lock_undispatched(conn, RELAY_BATCH)
                if rows:
                    await jobs.mark_dispatched(conn, [row["id"] for row in rows])
            else:
                rows = await jobs.claim_dispatch(conn, ids)
            if rows:  # sent before commit: if sending fails, nothing is marked
                await self._send(rows, labels or {})
            return len(rows), []

        return await self.records.write(work)

    async def adopt(self) -> int:
        """Turn outbox rows (jobs asked for inside other transactions) into jobs, each exactly
        once, and dispatch them; how many there were. Types this process does not know (an
        older version) are left for a process that does."""
        known = list(registry.REGISTRY)

        async def work(conn: Connection) -> tuple[list[Record], list[Change]]:
            asked = await jobs.take_outbox(conn, known, RELAY_BATCH)
            return await _write(conn, [self._job_of(row) for row in asked])

        rows = await self.records.write(work)
        if rows:
            await self.dispatch([row["id"] for row in rows])
        return len(rows)

    def _job_of(self, asked: Record) -> NewJob:
        job_type = registry.REGISTRY[asked["type"]]
        return NewJob(
            id=uuid.uuid4(),
            type=job_type.name,
            topic=job_type.topic,
            owner_id=asked["owner_id"],
            params=asked["params"],
            max_attempts=job_type.max_attempts or self.default_attempts,
        )

    async def _send(self, rows: Sequence[Record], labels: Mapping[UUID, dict[str, str]]) -> None:
        now = time.time()
        due_now, later = [], []
        for row in rows:
            job_labels = labels.get(row["id"], {})
            data = self.broker.message(str(row["id"]), row["type"], row["topic"], job_labels)
            run_at = row["run_at"]
            if run_at is not None and run_at.timestamp() > now:
                later.append((row["topic"], data, run_at.timestamp()))
            else:
                due_now.append((row["topic"], data))
        if due_now:
            await self.broker.send(due_now)
        for topic, data, due in later:
            await self.broker.send_later(topic, data, due)

    # -- the relay --------------------------------------------------------------------------

    async def relay(self, interval: float) -> None:
        """Dispatch what other transactions wrote (or a process left undispatched), every
        `interval` seconds. The query is an index-only look at the few undispatched rows."""
        while True:
            await asyncio.sleep(interval)
            await self._relay_once()

    async def _relay_once(self) -> None:
        try:
            while await self.adopt() == RELAY_BATCH:
                pass
            while await self.dispatch() == RELAY_BATCH:
                pass
        except Exception:
            log.exception("job relay failed; trying again")


async def _write(conn: Connection, new_jobs: Sequence[NewJob]) -> tuple[list[Record], list[Change]]:
    """New job rows and their `queued` events (refused repeats of an Idempotency-Key left out)."""
    rows = await jobs.insert_jobs(conn, new_jobs) if new_jobs else []
    for row in rows:
        metrics.job_metrics(row["type"], row["topic"]).enqueued.inc()
    changes = [Change(row["id"], row["topic"], row["owner_id"], JobState.QUEUED, 0) for row in rows]
    return rows, changes
