"""Job records and their event log: plain parameterised SQL, each function taking the connection.

Functions that take lists work on many jobs in one statement: the jobs actor and the workers
batch concurrent work (see `storage.batching.GroupCommit`), which is how a few processes sustain
thousands of state changes a second with durable records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from asyncpg import Record

from scheduler.model import Change, JobEvent
from storage.postgres import Connection

JOB_COLUMNS = """
    id, type, topic, owner_id, state, params, attempts, max_attempts, progress,
    progress_message, result, error, cancel_requested, last_seq, run_at, created_at,
    updated_at, started_at, finished_at
"""

# Event writers take this transaction lock before drawing sequence numbers, so events commit in
# `seq` order and a subscriber resuming from a number can never miss a lower one committed late.
_EVENT_ORDER_LOCK = 0x6A6F62736571


@dataclass(frozen=True, slots=True)
class NewJob:
    id: UUID
    type: str
    topic: str
    owner_id: str | None
    params: dict[str, Any]
    max_attempts: int
    idempotency_key: str | None = None
    request_hash: str | None = None
    run_at: datetime | None = None
    # Carried in the job's message, not stored: the trace context of the request that asked.
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended, for `finish`: the attempt it belongs to and the new state."""

    job_id: UUID
    attempt: int
    state: str
    result: Any = None
    error: str | None = None
    run_at: datetime | None = None
    message: str | None = None


# -- writing ---------------------------------------------------------------------------------


async def insert_jobs(conn: Connection, jobs: Sequence[NewJob]) -> list[Record]:
    """Insert new jobs (not yet dispatched); a repeated Idempotency-Key inserts nothing."""
    return await conn.fetch(
        f"""
        INSERT INTO jobs (id, type, topic, owner_id, params, max_attempts, idempotency_key,
                          request_hash, run_at)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                             $6::int[], $7::text[], $8::text[], $9::timestamptz[])
        ON CONFLICT ((coalesce(owner_id, '')), idempotency_key)
            WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING {JOB_COLUMNS}
        """,  # noqa: S608 - a constant column list, values are parameters
        [j.id for j in jobs],
        [j.type for j in jobs],
        [j.topic for j in jobs],
        [j.owner_id for j in jobs],
        [j.params for j in jobs],
        [j.max_attempts for j in jobs],
        [j.idempotency_key for j in jobs],
        [j.request_hash for j in jobs],
        [j.run_at for j in jobs],
    )


async def ask_in_transaction(
    conn: Connection, job_type: str, owner_id: str | None, params: dict[str, Any]
) -> None:
    """Ask for a job inside the caller's transaction: the work and its job commit together,
    or neither does. The relay makes it a job once the transaction has committed."""
    await conn.execute(
        "INSERT INTO job_outbox (type, owner_id, params) VALUES ($1, $2, $3)",
        job_type,
        owner_id,
        params,
    )


async def take_outbox(conn: Connection, types: Sequence[str], limit: int) -> list[Record]:
    """Remove and return the oldest jobs asked for (of `types`), locked: other relays skip them,
    and they come back if this transaction does not commit."""
    return await conn.fetch(
        """
        DELETE FROM job_outbox WHERE id IN (
            SELECT id FROM job_outbox WHERE type = ANY($1::text[])
            ORDER BY id LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        RETURNING type, owner_id, params
        """,
        list(types),
        limit,
    )


async def find_idempotent(conn: Connection, owner_id: str | None, key: str) -> Record | None:
    """The job an earlier request with this Idempotency-Key created, with its request hash."""
    return await conn.fetchrow(
        f"""
        SELECT {JOB_COLUMNS}, request_hash FROM jobs
        WHERE coalesce(owner_id, '') = coalesce($1, '') AND idempotency_key = $2
        """,  # noqa: S608 - a constant column list, values are parameters
        owner_id,
        key,
    )


async def append_events(conn: Connection, changes: Sequence[Change]) -> list[JobEvent]:
    """Append events in commit order and remember each job's latest sequence number.

    Call it last in the transaction: the order lock is held until commit."""
    if not changes:
        return []
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _EVENT_ORDER_LOCK)
    rows = await conn.fetch(
        """
        WITH events AS (
            INSERT INTO job_events (seq, job_id, topic, owner_id, state, progress, message)
            SELECT nextval('job_event_seq'), job_id, topic, owner_id, state, progress, message
            FROM (
                SELECT * FROM unnest(
                    $1::uuid[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::text[]
                ) WITH ORDINALITY AS c(job_id, topic, owner_id, state, progress, message, n)
                ORDER BY n
            ) ordered
            RETURNING seq, job_id, topic, owner_id, state, progress, message, created_at
        ), latest AS (
            UPDATE jobs SET last_seq = e.seq
            FROM (SELECT job_id, max(seq) AS seq FROM events GROUP BY job_id) e
            WHERE jobs.id = e.job_id
        )
        SELECT * FROM events ORDER BY seq
        """,
        [c.job_id for c in changes],
        [c.topic for c in changes],
        [c.owner_id for c in changes],
        [c.state for c in changes],
        [c.progress for c in changes],
        [c.message for c in changes],
    )
    return [JobEvent.from_record(row) for row in rows]


async def lock_undispatched(conn: Connection, limit: int) -> list[Record]:
    """Jobs written but not yet handed to their stream, oldest first, locked for this
    transaction; rows another relay holds are skipped."""
    return await conn.fetch(
        f"""
        SELECT {JOB_COLUMNS} FROM jobs
        WHERE dispatched_at IS NULL AND state = 'queued'
        ORDER BY created_at
        LIMIT $1
        FOR UPDATE SKIP LOCKED
        """,  # noqa: S608 - a constant column list, values are parameters
        limit,
    )


async def mark_dispatched(conn: Connection, ids: Sequence[UUID]) -> None:
    await conn.execute("UPDATE jobs SET dispatched_at = now() WHERE id = ANY($1::uuid[])", ids)


async def claim_dispatch(conn: Connection, ids: Sequence[UUID]) -> list[Record]:
    """Mark these just-written jobs dispatched, locking them for this transaction, in one
    statement; those another relay is dispatching (or did) are left out."""
    return await conn.fetch(
        f"""
        UPDATE jobs SET dispatched_at = now()
        WHERE id = ANY($1::uuid[]) AND dispatched_at IS NULL AND state = 'queued'
        RETURNING {JOB_COLUMNS}
        """,  # noqa: S608 - a constant column list, values are parameters
        ids,
    )


async def claim(
    conn: Connection, ids: Sequence[UUID], worker: str, lease_seconds: float
) -> list[Record]:
    """Start a run of each job that may run now, and say what became of every id.

    A job runs when it is queued or retrying, or when it was running under a lease that has
    expired (its worker died). A job whose worker died on its last attempt is dead (a poison
    job); one whose cancel was asked while its worker died is cancelled. Every id comes back
    with `previous` (its state before, NULL if unknown) and `state` (after)."""
    return await conn.fetch(
        """
        WITH prev AS (
            SELECT id, state, lease_until, cancel_requested, attempts, max_attempts
            FROM jobs WHERE id = ANY($1::uuid[])
            ORDER BY id
            FOR UPDATE
        ), claimed AS (
            UPDATE jobs j SET
                state = CASE
                    WHEN p.cancel_requested THEN 'cancelled'
                    WHEN p.state = 'running' AND p.attempts >= p.max_attempts THEN 'dead'
                    ELSE 'running' END,
                attempts = CASE
                    WHEN p.cancel_requested OR (p.state = 'running'
                        AND p.attempts >= p.max_attempts) THEN j.attempts
                    ELSE j.attempts + 1 END,
                error = CASE
                    WHEN p.state = 'running' AND NOT p.cancel_requested
                        AND p.attempts >= p.max_attempts
                    THEN format('the worker running it was lost %s times', p.attempts)
                    ELSE j.error END,
                worker = $2,
                lease_until = now() + make_interval(secs => $3),
                started_at = coalesce(j.started_at, now()),
                finished_at = CASE
                    WHEN p.cancel_requested OR (p.state = 'running'
                        AND p.attempts >= p.max_attempts) THEN now() END,
                run_at = NULL,
                dispatched_at = coalesce(j.dispatched_at, now())
            FROM prev p
            WHERE j.id = p.id
              AND (p.state IN ('queued', 'retrying')
                   OR (p.state = 'running' AND p.lease_until < now()))
            RETURNING j.id, j.state, j.type, j.topic, j.owner_id, j.params, j.attempts,
                      j.max_attempts, j.progress
        )
        SELECT p.id, p.state AS previous, coalesce(c.state, p.state) AS state,
               p.lease_until, c.type, c.topic AS claimed_topic, c.owner_id, c.params,
               c.attempts, c.max_attempts, c.progress, c.id IS NOT NULL AS claimed
        FROM prev p LEFT JOIN claimed c USING (id)
        """,
        ids,
        worker,
        lease_seconds,
    )


async def finish(conn: Connection, outcomes: Sequence[Outcome]) -> list[Record]:
    """Record how runs ended. A run that is no longer the job's current one (its lease was
    taken over, or it was already finished) changes nothing: a job completes once."""
    return await conn.fetch(
        """
        UPDATE jobs j SET
            state = u.state,
            result = coalesce(u.result, j.result),
            error = u.error,
            progress = CASE WHEN u.state = 'succeeded' THEN 100 ELSE j.progress END,
            progress_message = CASE WHEN u.state = 'succeeded' THEN NULL
                                    ELSE j.progress_message END,
            attempts = CASE WHEN u.state = 'queued' THEN j.attempts - 1 ELSE j.attempts END,
            finished_at = CASE WHEN u.state IN ('succeeded', 'failed', 'dead', 'cancelled')
                               THEN now() END,
            run_at = u.run_at,
            lease_until = NULL,
            cancel_requested = false
        FROM unnest($1::uuid[], $2::int[], $3::text[], $4::jsonb[], $5::text[],
                    $6::timestamptz[]) AS u(id, attempt, state, result, error, run_at)
        WHERE j.id = u.id AND j.attempts = u.attempt AND j.state = 'running'
        RETURNING j.id, j.topic, j.owner_id, j.state, j.progress, j.type
        """,
        [o.job_id for o in outcomes],
        [o.attempt for o in outcomes],
        [o.state for o in outcomes],
        [o.result for o in outcomes],
        [o.error for o in outcomes],
        [o.run_at for o in outcomes],
    )


async def report_progress(
    conn: Connection, reports: Sequence[tuple[UUID, int, int, str | None]]
) -> list[Record]:
    """Record (job, attempt, percent, message) for runs still current."""
    return await conn.fetch(
        """
        UPDATE jobs j SET progress = u.progress, progress_message = u.message
        FROM unnest($1::uuid[], $2::int[], $3::smallint[], $4::text[])
             AS u(id, attempt, progress, message)
        WHERE j.id = u.id AND j.attempts = u.attempt AND j.state = 'running'
        RETURNING j.id, j.topic, j.owner_id, j.state, j.progress, j.progress_message
        """,
        [r[0] for r in reports],
        [r[1] for r in reports],
        [r[2] for r in reports],
        [r[3] for r in reports],
    )


async def extend_leases(
    conn: Connection, ids: Sequence[UUID], worker: str, lease_seconds: float
) -> list[Record]:
    """Keep this worker's runs claimed; answers which of them an operator asked to cancel."""
    return await conn.fetch(
        """
        UPDATE jobs SET lease_until = now() + make_interval(secs => $3)
        WHERE id = ANY($1::uuid[]) AND worker = $2 AND state = 'running'
        RETURNING id, cancel_requested
        """,
        ids,
        worker,
        lease_seconds,
    )


async def request_cancel(conn: Connection, job_id: UUID) -> Record | None:
    """Cancel a waiting job at once, or ask a running one's worker to stop it."""
    return await conn.fetchrow(
        f"""
        UPDATE jobs SET
            state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END,
            cancel_requested = (state = 'running'),
            finished_at = CASE WHEN state = 'running' THEN NULL ELSE now() END,
            run_at = NULL
        WHERE id = $1 AND state IN ('queued', 'retrying', 'running')
        RETURNING {JOB_COLUMNS}
        """,  # noqa: S608 - a constant column list, values are parameters
        job_id,
    )


async def requeue(conn: Connection, job_id: UUID, states: Sequence[str]) -> Record | None:
    """Send a finished job back to the queue with a fresh attempt budget (admin replay)."""
    return await conn.fetchrow(
        f"""
        UPDATE jobs SET state = 'queued', attempts = 0, progress = 0, progress_message = NULL,
               result = NULL, error = NULL, cancel_requested = false, finished_at = NULL,
               lease_until = NULL, run_at = NULL, dispatched_at = NULL
        WHERE id = $1 AND state = ANY($2::text[])
        RETURNING {JOB_COLUMNS}
        """,  # noqa: S608 - a constant column list, values are parameters
        job_id,
        list(states),
    )


# -- reading ---------------------------------------------------------------------------------


async def get_job(conn: Connection, job_id: UUID) -> Record | None:
    query = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"  # noqa: S608 - constant columns
    return await conn.fetchrow(query, job_id)


async def list_jobs(
    conn: Connection,
    *,
    owner_id: str | None,
    states: Sequence[str] | None,
    topics: Sequence[str] | None,
    before: tuple[datetime, UUID] | None,
    limit: int,
) -> list[Record]:
    """Newest first, keyset-paginated on (created_at, id); `owner_id` None means everyone's."""
    return await conn.fetch(
        f"""
        SELECT {JOB_COLUMNS} FROM jobs
        WHERE ($1::text IS NULL OR owner_id = $1)
          AND ($2::text[] IS NULL OR state = ANY($2::text[]))
          AND ($3::text[] IS NULL OR topic = ANY($3::text[]))
          AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid))
        ORDER BY created_at DESC, id DESC
        LIMIT $6
        """,  # noqa: S608 - a constant column list, values are parameters
        owner_id,
        list(states) if states else None,
        list(topics) if topics else None,
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )


async def events_since(
    conn: Connection,
    since: int,
    *,
    job_ids: Sequence[UUID] = (),
    owner_id: str | None = None,
    topics: Sequence[str] = (),
    limit: int,
) -> list[JobEvent]:
    """Events after `since` for some jobs, one owner's jobs, or whole topics, oldest first."""
    rows = await conn.fetch(
        """
        SELECT seq, job_id, topic, owner_id, state, progress, message, created_at
        FROM job_events
        WHERE seq > $1
          AND (job_id = ANY($2::uuid[]) OR owner_id = $3 OR topic = ANY($4::text[]))
        ORDER BY seq
        LIMIT $5
        """,
        since,
        list(job_ids),
        owner_id,
        list(topics),
        limit,
    )
    return [JobEvent.from_record(row) for row in rows]


async def backlog(conn: Connection) -> list[Record]:
    """Per topic: jobs waiting to start and how long the oldest has waited."""
    return await conn.fetch(
        """
        SELECT topic, count(*) AS waiting,
               coalesce(extract(epoch FROM now() - min(coalesce(run_at, created_at))), 0)::float8
                   AS oldest_seconds
        FROM jobs
        WHERE state IN ('queued', 'retrying') AND coalesce(run_at, created_at) <= now()
        GROUP BY topic
        """
    )


# -- upkeep ----------------------------------------------------------------------------------


async def maintain_partitions(
    conn: Connection, table: str, months_ahead: int, retention_days: int
) -> tuple[int, int]:
    """Create the coming months' partitions of `table`; drop those past retention."""
    created = await conn.fetchval(
        "SELECT ensure_monthly_partitions($1, (now() AT TIME ZONE 'UTC')::date, $2)",
        table,
        months_ahead + 1,
    )
    dropped = await conn.fetchval(
        "SELECT drop_partitions_before($1, now() - make_interval(days => $2))",
        table,
        retention_days,
    )
    return created, dropped


async def delete_finished(conn: Connection, retention_days: int, limit: int) -> list[Record]:
    """Delete up to `limit` jobs finished longer ago than the retention; return their results."""
    return await conn.fetch(
        """
        DELETE FROM jobs WHERE id IN (
            SELECT id FROM jobs
            WHERE finished_at < now() - make_interval(days => $1)
            ORDER BY finished_at
            LIMIT $2
        )
        RETURNING id, result
        """,
        retention_days,
        limit,
    )
