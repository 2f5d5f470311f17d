"""Jobs on real worker and scheduler processes, against the real PostgreSQL and Redis."""

from __future__ import annotations

import contextlib
import itertools
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from config import Settings
from scheduler.broker import JobKeys
from scheduler.execution import backoff
from storage import jobs
from tests.conftest import eventually
from tests.jobs_support import FAST, Jobs, job_queue


@pytest.fixture
async def queue(job_settings: Settings, tmp_path: Path) -> AsyncIterator[Jobs]:
    async with job_queue(job_settings, tmp_path) as jobs:
        yield jobs


def states(events) -> list[str]:
    return [e["state"] for e in events]


async def test_jobs_sent_before_any_worker_runs_and_a_sigkilled_run_completes_once(
    queue: Jobs,
) -> None:
    marker = uuid.uuid4().hex
    job_id = await queue.submit("test_steps", {"steps": 20, "pause": 0.1, "marker": marker})
    first = await queue.worker("default").start()  # the job was sent before any worker existed

    async def midway() -> bool:
        return (await queue.job(job_id))["progress"] >= 20

    await eventually(midway)
    first.signal(signal.SIGKILL)
    await first.wait()
    await queue.worker("default").start()  # no other traffic: only the reclaim timer finds it

    done = await queue.until(job_id, "succeeded", "dead", timeout=25)
    assert done["state"] == "succeeded"
    assert done["attempts"] == 2
    assert done["result"] == {"steps": 20, "attempt": 2, "runs": 2}
    assert await queue.runs(marker) == 2  # killed once, completed once
    assert states(await queue.events(job_id)).count("succeeded") == 1


async def test_failed_attempts_retry_with_growing_backoff(queue: Jobs) -> None:
    await queue.worker("default").start()
    job_id = await queue.submit("test_steps", {"steps": 1, "pause": 0, "fail_times": 3})

    done = await queue.until(job_id, "succeeded", "dead", timeout=20)
    assert done["state"] == "succeeded"
    assert done["attempts"] == 4
    events = await queue.events(job_id)
    waits = [
        (after["created_at"] - before["created_at"]).total_seconds()
        for before, after in itertools.pairwise(events)
        if before["state"] == "retrying" and after["state"] == "running"
    ]
    base = FAST["job_backoff_seconds"]
    assert len(waits) == 3
    for attempt, waited in enumerate(waits, start=1):
        assert waited >= base * 2 ** (attempt - 1) / 2  # never earlier than the backoff's floor
    assert waits[0] < waits[2]
    assert next(e["message"] for e in events if e["state"] == "retrying").startswith(
        "attempt 1 failed"
    )


def test_backoff_doubles_with_jitter_and_a_cap() -> None:
    for attempt in range(1, 8):
        delay = backoff(attempt, 1.0, 20.0)
        full = min(20.0, 2.0 ** (attempt - 1))
        assert full / 2 <= delay <= full


async def test_a_poison_job_is_dead_lettered_then_replayed(queue: Jobs) -> None:
    marker = uuid.uuid4().hex
    await queue.redis.set(f"test-poison:{marker}", 1)
    job_id = await queue.submit("test_crash", {"marker": marker})
    crashes = 0
    while (await queue.job(job_id))["state"] != "dead":  # each attempt kills its worker
        worker = await queue.worker("default").start()

        async def settled(worker=worker) -> bool:
            exited = worker.process is not None and worker.process.returncode is not None
            return exited or (await queue.job(job_id))["state"] == "dead"

        await eventually(settled, timeout=15)
        crashes += worker.process is not None and worker.process.returncode == -signal.SIGKILL
    dead = await queue.job(job_id)
    assert crashes == 3
    assert dead["attempts"] == 3
    assert "lost 3 times" in dead["error"]
    assert await queue.runs(marker) == 3

    await queue.redis.delete(f"test-poison:{marker}")  # the cause is fixed: an admin replays it
    replayed = await queue.replay(job_id)
    assert replayed.state == "queued"
    assert replayed.attempts == 0
    done = await queue.until(job_id, "succeeded", timeout=15)
    assert done["attempts"] == 1
    assert done["result"] == {"runs": 4}


async def test_sigterm_lets_short_jobs_finish_and_returns_long_ones(queue: Jobs) -> None:
    worker = await queue.worker("default").start()
    short = [await queue.submit("test_steps", {"steps": 2, "pause": 0.2}) for _ in range(3)]
    long = [await queue.submit("test_steps", {"steps": 50, "pause": 0.1}) for _ in range(3)]

    async def all_running() -> bool:
        return all([(await queue.job(j))["state"] == "running" for j in short + long])

    await eventually(all_running)
    worker.signal(signal.SIGTERM)
    assert await worker.wait(timeout=15) == 0  # it exits: nothing hangs on shutdown

    for job_id in short:  # finished within JOB_SHUTDOWN_TIMEOUT
        assert (await queue.job(job_id))["state"] == "succeeded"
    for job_id in long:  # handed back, the interrupted attempt not counted
        row = await queue.job(job_id)
        assert (row["state"], row["attempts"]) == ("queued", 0)
        assert (await queue.events(job_id))[-1]["message"] == (
            "returned to the queue: the worker stopped"
        )

    await queue.worker("default").start()
    for job_id in long:
        done = await queue.until(job_id, "succeeded", timeout=20)
        assert done["attempts"] == 1
        assert states(await queue.events(job_id)).count("succeeded") == 1


async def test_cancel_stops_a_running_job_and_a_waiting_one(queue: Jobs) -> None:
    await queue.worker("default").start()
    running = await queue.submit("test_steps", {"steps": 100, "pause": 0.1})
    await queue.until(running, "running")
    asked = await queue.cancel(running)
    assert asked.cancel_requested
    cancelled = await queue.until(running, "cancelled", timeout=10)
    assert cancelled["progress"] < 100
    assert cancelled["finished_at"] is not None

    waiting = await queue.submit("test_steps", {"steps": 1, "pause": 0, "fail_times": 4})
    await queue.until(waiting, "retrying")
    assert (await queue.cancel(waiting)).state == "cancelled"
    delayed = JobKeys(queue.settings.redis_namespace).delayed

    async def delivered() -> bool:  # its delayed retry still arrives, and must change nothing
        return await queue.redis.zcard(delayed) == 0

    await eventually(delivered)
    assert states(await queue.events(waiting))[-2:] == ["retrying", "cancelled"]
    assert (await queue.job(waiting))["state"] == "cancelled"


async def test_two_schedulers_enqueue_one_job_per_period(queue: Jobs) -> None:
    every = {"JOB_MAINTENANCE_INTERVAL": "1"}
    schedulers = [await queue.scheduler(**every).start() for _ in range(2)]
    await queue.worker("maintenance").start()

    async def periods() -> list:
        async with queue.db.primary() as conn:
            return await conn.fetch(
                "SELECT idempotency_key, state, result FROM jobs WHERE type = 'maintenance' "
                "AND idempotency_key LIKE 'schedule:maintenance:1:%' ORDER BY idempotency_key"
            )

    async def three_done() -> bool:
        return sum(row["state"] == "succeeded" for row in await periods()) >= 3

    await eventually(three_done, timeout=20)
    rows = await periods()
    numbers = [int(row["idempotency_key"].rsplit(":", 1)[1]) for row in rows]
    assert numbers == sorted(set(numbers))  # never two jobs for one period
    logs = "".join(s.log.read_text() for s in schedulers)
    assert "periodic job already enqueued" in logs  # they did race for the same periods
    results = [row["result"] for row in rows if row["state"] == "succeeded"]
    assert all(
        set(r) == {"partitions_created", "partitions_dropped", "jobs_deleted"} for r in results
    )


async def test_maintenance_keeps_partitions_ahead_and_drops_expired_ones(queue: Jobs) -> None:
    old = datetime(2001, 3, 1, tzinfo=UTC)
    async with queue.db.primary() as conn:
        await conn.execute("SELECT ensure_monthly_partitions('job_events', $1, 1)", old.date())
        await conn.execute(
            "INSERT INTO job_events (seq, job_id, topic, state, progress, created_at) "
            "VALUES (nextval('job_event_seq'), gen_random_uuid(), 'default', 'queued', 0, $1)",
            old,
        )
    await queue.worker("maintenance").start()
    await queue.scheduler(JOB_MAINTENANCE_INTERVAL="3600").start()  # this hour's run, at once

    async def enqueued() -> bool:
        async with queue.db.primary() as conn:
            return bool(await conn.fetchval(hourly))

    hourly = "SELECT id FROM jobs WHERE idempotency_key LIKE 'schedule:maintenance:3600:%'"
    await eventually(enqueued)
    async with queue.db.primary() as conn:
        job_id = await conn.fetchval(hourly)
    done = await queue.until(job_id, "succeeded", "dead", timeout=20)
    assert done["state"] == "succeeded"  # (an earlier test's leftover run may have done it)
    async with queue.db.primary() as conn:
        names = {
            row["relname"]
            for row in await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'job_events'::regclass"
            )
        }
        now = datetime.now(UTC)
        ahead = [divmod(now.year * 12 + now.month - 1 + k, 12) for k in range(3)]
    assert "job_events_p200103" not in names
    assert {f"job_events_p{y}{m + 1:02d}" for y, m in ahead} <= names


async def test_a_job_asked_for_inside_another_transaction_runs_once_it_commits(
    queue: Jobs,
) -> None:
    await queue.worker("default").start()
    committed, rolled_back = uuid.uuid4().hex, uuid.uuid4().hex
    async with queue.db.primary() as conn:
        async with conn.transaction():  # as an order's statement does with its follow-up
            await jobs.ask_in_transaction(conn, "test_steps", "tester", {"marker": committed})
        with contextlib.suppress(RuntimeError):
            async with conn.transaction():
                await jobs.ask_in_transaction(conn, "test_steps", "tester", {"marker": rolled_back})
                raise RuntimeError("the work failed")

    async def asked(marker: str) -> list:
        async with queue.db.primary() as conn:
            return await conn.fetch("SELECT id FROM jobs WHERE params->>'marker' = $1", marker)

    async def adopted() -> bool:
        return len(await asked(committed)) == 1

    await eventually(adopted)
    [job] = await asked(committed)
    done = await queue.until(job["id"], "succeeded", timeout=15)
    assert done["attempts"] == 1
    assert states(await queue.events(job["id"]))[0] == "queued"
    assert await queue.runs(committed) == 1
    assert await asked(rolled_back) == []
    async with queue.db.primary() as conn:
        assert await conn.fetchval("SELECT count(*) FROM job_outbox") == 0
