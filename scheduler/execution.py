"""Running one delivery of a job, in a worker: claim it, run it, record how it ended.

Every job type is registered with taskiq as a task taking the job id; taskiq's receiver
delivers it here and acknowledges the message when this returns. What happens in between:

1. Claim (batched with concurrent deliveries, one statement): a job that is queued or retrying,
   or running under an expired lease (its worker died), becomes `running` with a lease and one
   more attempt. A finished job is not run again: a redelivery does nothing. A job running
   under a live lease elsewhere is deferred until that lease would expire, then looked at again.
   A job whose worker died on its last attempt is `dead` (a poison job).
2. Run the handler in its own task, so that a cancel (API) or a stopping worker can stop it.
3. Record the outcome, only if this run is still the job's current attempt: `succeeded` with
   the result; on an exception `retrying` with exponential backoff and jitter, or `dead` when
   attempts are used up (`failed` for `PermanentFailure`); `cancelled`; or back to `queued`
   when the worker stops before the job finished.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from asyncpg import Record

from actors.errors import InvalidInput
from config import Settings
from observability import metrics, tracing
from scheduler.broker import Delivery, JobBroker
from scheduler.context import JobContext, Resources
from scheduler.model import Change, JobState
from scheduler.records import Records
from scheduler.registry import REGISTRY, JobType, PermanentFailure
from scheduler.tracing import job_span
from storage import jobs
from storage.batching import GroupCommit
from storage.jobs import Outcome
from storage.postgres import Connection

log = logging.getLogger("backend.jobs")

# A deferred delivery is looked at again this long after the lease it waits for would expire.
_DEFER_MARGIN = 1.0


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before attempt `attempt + 1`: `base * 2**(attempt-1)` capped, with "equal
    jitter" (half fixed, half random), so delays spread out and still grow attempt by attempt."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)


@dataclass(eq=False)
class Run:
    job_type: JobType[Any]
    attempt: int
    task: asyncio.Task[Any]
    started: float = field(default_factory=time.monotonic)
    cancel_requested: bool = False
    returning: bool = False


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        broker: JobBroker,
        records: Records,
        resources: Resources,
        worker: str,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.records = records
        self.resources = resources
        self.worker = worker
        self.runs: dict[UUID, Run] = {}
        self.active: set[asyncio.Task[Any]] = set()  # deliveries being handled
        self._claims: GroupCommit[UUID, Record | None] = GroupCommit(self._claim_many, name="claim")
        self._outcomes: GroupCommit[Outcome, bool] = GroupCommit(self._finish_many, name="finish")
        self._progress: GroupCommit[tuple[UUID, int, int, str | None], None] = GroupCommit(
            self._progress_many, name="progress"
        )

    def register(self) -> None:
        """Make every registered job type a taskiq task of the broker."""
        for job_type in REGISTRY.values():
            self.broker.task(task_name=job_type.name)(self._entry(job_type))

    def _entry(self, job_type: JobType[Any]) -> Callable[[str], Awaitable[None]]:
        async def run(job_id: str) -> None:
            await self.run(job_type, job_id)

        run.__name__ = job_type.name
        return run

    # -- one delivery -----------------------------------------------------------------------

    async def run(self, job_type: JobType[Any], job_id: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.active.add(task)
        try:
            await self._deliver(job_type, job_id)
        finally:
            self.active.discard(task)

    async def _deliver(self, job_type: JobType[Any], job_id: str) -> None:
        delivery = self.broker.delivery_of(job_id)
        row = await self._claims.submit(UUID(job_id))
        if row is None or not row["claimed"]:
            await self._not_claimed(row, delivery)
            return
        topic = row["claimed_topic"]
        counters = metrics.job_metrics(job_type.name, topic)
        if row["state"] != JobState.RUNNING:  # dead (poison) or cancelled while its worker died
            _count(row["state"], counters)
            return
        counters.started.inc()
        outcome = await self._execute(job_type, row, counters)
        if await self._outcomes.submit(outcome):
            await self._hand_on(outcome, delivery, job_type.name, topic)

    async def _not_claimed(self, row: Record | None, delivery: Delivery | None) -> None:
        """Someone else holds a live lease on the job: look again when it would expire.
        Anything else (finished, unknown, a duplicate) needs nothing: the message is acked."""
        if row is None or row["previous"] != JobState.RUNNING or delivery is None:
            return
        lease = row["lease_until"]
        due = (lease.timestamp() if lease else time.time()) + _DEFER_MARGIN
        await self.broker.defer(delivery, due)

    async def _execute(
        self, job_type: JobType[Any], row: Record, counters: metrics.JobMetrics
    ) -> Outcome:
        job_id, attempt = row["id"], row["attempts"]
        context = JobContext(
            job_id, attempt, row["owner_id"], row["claimed_topic"], self.resources, self.progress
        )
        with job_span(job_type.name, str(job_id), attempt) as span:
            outcome = await self._attempt(job_type, row, context, counters)
            if outcome.error is not None:
                tracing.failed(span, RuntimeError(outcome.error))
            return outcome

    async def _attempt(
        self,
        job_type: JobType[Any],
        row: Record,
        context: JobContext,
        counters: metrics.JobMetrics,
    ) -> Outcome:
        job_id, attempt = context.job_id, context.attempt
        task = asyncio.create_task(self._call(job_type, context, row["params"]))
        run = self.runs[job_id] = Run(job_type, attempt, task)
        counters.running.inc()
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError as error:
            if not task.done():  # this delivery's own task was cancelled: stop the job too
                task.cancel()
                raise
            if run.returning or run.cancel_requested:
                state = JobState.QUEUED if run.returning else JobState.CANCELLED
                return Outcome(job_id, attempt, state, message=_stopped(run))
            # The handler cancelled itself (nobody asked): a failed attempt like any other.
            return self._after_failure(job_id, attempt, row["max_attempts"], error)
        except PermanentFailure as error:
            return Outcome(job_id, attempt, JobState.FAILED, error=_describe(error))
        except Exception as error:
            log.warning("job attempt failed", exc_info=error, extra={"job_id": str(job_id)})
            return self._after_failure(job_id, attempt, row["max_attempts"], error)
        else:
            return Outcome(job_id, attempt, JobState.SUCCEEDED, result=result)
        finally:
            counters.running.dec()
            counters.duration.observe(time.monotonic() - run.started)
            del self.runs[job_id]

    async def _call(self, job_type: JobType[Any], context: JobContext, params: Any) -> Any:
        try:
            parsed = job_type.parse(params)
        except InvalidInput as error:  # stored before its type changed: retrying cannot help
            raise PermanentFailure(f"{error.detail}: {error.errors}") from error
        if job_type.timeout is None:
            return await job_type.handler(context, parsed)
        async with asyncio.timeout(job_type.timeout):
            return await job_type.handler(context, parsed)

    def _after_failure(
        self, job_id: UUID, attempt: int, max_attempts: int, error: BaseException
    ) -> Outcome:
        if attempt >= max_attempts:
            return Outcome(job_id, attempt, JobState.DEAD, error=_describe(error))
        delay = backoff(
            attempt, self.settings.job_backoff_seconds, self.settings.job_backoff_max_seconds
        )
        run_at = datetime.now(UTC) + timedelta(seconds=delay)
        return Outcome(
            job_id,
            attempt,
            JobState.RETRYING,
            error=_describe(error),
            run_at=run_at,
            message=f"attempt {attempt} failed; next in {delay:.1f}s",
        )

    async def _hand_on(
        self, outcome: Outcome, delivery: Delivery | None, job_type: str, topic: str
    ) -> None:
        """After the record: a retry waits in the delayed set, a returned job goes back to its
        stream; the delivery is settled atomically with the hand-over (a fresh message is sent
        when there is no delivery to hand on, so a retry never waits for nothing)."""
        due = outcome.run_at.timestamp() if outcome.run_at is not None else None
        if outcome.state == JobState.RETRYING and due is not None:
            if delivery is not None:
                await self.broker.defer(delivery, due)
            else:
                message = self.broker.message(str(outcome.job_id), job_type, topic, {})
                await self.broker.send_later(topic, message, due)
        elif outcome.state == JobState.QUEUED:
            if delivery is not None:
                await self.broker.give_back(delivery)
            else:
                message = self.broker.message(str(outcome.job_id), job_type, topic, {})
                await self.broker.send([(topic, message)])

    # -- control ----------------------------------------------------------------------------

    async def progress(self, job_id: UUID, attempt: int, percent: int, note: str | None) -> None:
        await self._progress.submit((job_id, attempt, percent, note))

    def cancel(self, job_id: UUID) -> bool:
        """Stop a run of this worker that an operator cancelled."""
        run = self.runs.get(job_id)
        if run is None:
            return False
        run.cancel_requested = True
        run.task.cancel()
        return True

    def return_all(self) -> int:
        """Stop every run, to be handed back to the queue (the worker is stopping)."""
        for run in self.runs.values():
            run.returning = True
            run.task.cancel()
        return len(self.runs)

    async def drain(self) -> None:
        """Wait for pending writes."""
        for batcher in (self._claims, self._outcomes, self._progress):
            await batcher.close()

    # -- batched writes ---------------------------------------------------------------------

    async def _claim_many(self, ids: list[UUID]) -> list[Record | None]:
        lease = self.settings.job_claim_timeout

        async def work(conn: Connection) -> tuple[list[Record], list[Change]]:
            rows = await jobs.claim(conn, sorted(set(ids)), self.worker, lease)
            changes = [_change(row, row["claimed_topic"]) for row in rows if row["claimed"]]
            return rows, changes

        rows = await self.records.write(work)
        by_id = {row["id"]: row for row in rows}
        answers: list[Record | None] = []
        seen: set[UUID] = set()
        for job_id in ids:  # a second delivery of one job in the same batch is a duplicate
            answers.append(None if job_id in seen else by_id.get(job_id))
            seen.add(job_id)
        return answers

    async def _finish_many(self, outcomes: list[Outcome]) -> list[bool]:
        notes = {o.job_id: o.message for o in outcomes}

        async def work(conn: Connection) -> tuple[list[Record], list[Change]]:
            rows = await jobs.finish(conn, outcomes)
            return rows, [_change(row, row["topic"], notes.get(row["id"])) for row in rows]

        rows = await self.records.write(work)
        done = {row["id"]: row for row in rows}
        for row in rows:
            _count(row["state"], metrics.job_metrics(row["type"], row["topic"]))
        return [o.job_id in done for o in outcomes]

    async def _progress_many(self, reports: list[tuple[UUID, int, int, str | None]]) -> list[None]:
        latest = list({r[0]: r for r in reports}.values())

        async def work(conn: Connection) -> tuple[None, list[Change]]:
            rows = await jobs.report_progress(conn, latest)
            return None, [_change(row, row["topic"], row["progress_message"]) for row in rows]

        await self.records.write(work)
        return [None] * len(reports)

    async def extend_leases(self) -> None:
        """Keep this worker's runs claimed in the database; stop those cancelled meanwhile."""
        if not self.runs:
            return
        async with self.records.db.primary() as conn:
            rows = await jobs.extend_leases(
                conn, list(self.runs), self.worker, self.settings.job_claim_timeout
            )
        for row in rows:
            if row["cancel_requested"]:
                self.cancel(row["id"])


def _change(row: Record, topic: str, message: str | None = None) -> Change:
    return Change(row["id"], topic, row["owner_id"], row["state"], row["progress"], message)


def _count(state: str, counters: metrics.JobMetrics) -> None:
    if state == JobState.SUCCEEDED:
        counters.succeeded.inc()
    elif state == JobState.FAILED:
        counters.failed.inc()
    elif state == JobState.RETRYING:
        counters.failed.inc()
        counters.retried.inc()
    elif state == JobState.DEAD:
        counters.failed.inc()
        counters.dead.inc()
    elif state == JobState.CANCELLED:
        counters.cancelled.inc()
    elif state == JobState.QUEUED:
        counters.returned.inc()


def _stopped(run: Run) -> str:
    return "returned to the queue: the worker stopped" if run.returning else "cancelled"


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:2000]
