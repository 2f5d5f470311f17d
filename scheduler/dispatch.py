"""Getting jobs from their records into their streams, exactly once per record.

A job is first written (with its `queued` event) and committed; then it is dispatched: its
message is sent to its topic's stream (or to the delayed set, if it is due later) inside a
transaction that locks the record and marks it dispatched. A process that dies between the two
leaves the record undispatched, and the relay (every API process runs one) sends it. A record
written inside another transaction (`storage.jobs.insert_outbox_job`, an order's follow-up)
is dispatched the same way, by the relay's next round (every `JOB_POLL_INTERVAL`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from uuid import UUID

from asyncpg import Record

from observability import metrics
from scheduler.broker import JobBroker
from scheduler.model import Change, JobState
from scheduler.records import Records
from scheduler.tracing import outgoing
from storage import jobs
from storage.jobs import NewJob
from storage.postgres import Connection

log = logging.getLogger("backend.jobs")

RELAY_BATCH = 500


class Dispatcher:
    def __init__(self, records: Records, broker: JobBroker) -> None:
        self.records = records
        self.broker = broker

    async def submit(self, new_jobs: Sequence[NewJob]) -> list[Record]:
        """Write jobs and dispatch them; jobs refused for a repeated key are left out."""

        async def work(conn: Connection) -> tuple[list[Record], list[Change]]:
            rows = await jobs.insert_jobs(conn, new_jobs)
            changes = [
                Change(row["id"], row["topic"], row["owner_id"], JobState.QUEUED, 0) for row in rows
            ]
            return rows, changes

        rows = await self.records.write(work)
        for row in rows:
            metrics.job_metrics(row["type"], row["topic"]).enqueued.inc()
        if rows:
            await self.dispatch([row["id"] for row in rows])
        return rows

    async def dispatch(self, ids: Sequence[UUID] | None = None) -> int:
        """Send undispatched jobs (these `ids`, or any) to their streams; how many were sent."""

        async def work(conn: Connection) -> tuple[int, list[Change]]:
            if ids is None:  # the relay: whatever is left, oldest first
                rows = await jobs.lock_undispatched(conn, RELAY_BATCH)
                if rows:
                    await jobs.mark_dispatched(conn, [row["id"] for row in rows])
            else:
                rows = await jobs.claim_dispatch(conn, ids)
            if not rows:
                return 0, []
            await self._send(rows)  # before commit: if sending fails, nothing is marked
            fresh = [  # written by another transaction without its first event
                Change(row["id"], row["topic"], row["owner_id"], JobState.QUEUED, 0)
                for row in rows
                if row["last_seq"] == 0
            ]
            for row in rows:
                if row["last_seq"] == 0:
                    metrics.job_metrics(row["type"], row["topic"]).enqueued.inc()
            return len(rows), fresh

        return await self.records.write(work)

    async def _send(self, rows: Sequence[Record]) -> None:
        trace = outgoing()
        now = time.time()
        due_now, later = [], []
        for row in rows:
            data = self.broker.message(str(row["id"]), row["type"], row["topic"], trace)
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
            while await self.dispatch() == RELAY_BATCH:
                pass
        except Exception:
            log.exception("job relay failed; trying again")
