"""The jobs actor: the API side of background jobs.

It submits jobs (batched: concurrent submissions share one transaction and one round trip to
Redis), answers for their state, lists them, cancels them, replays dead ones, and serves the
event log to WebSocket subscribers. Its relay task dispatches jobs that other transactions wrote
(the transactional outbox). Who may see a job: its owner and staff; to anyone else it does not
exist (404).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
from asyncpg import Record

from actors import pools
from actors.access import permits
from actors.errors import Conflict, FieldError, InvalidInput, NotFound, PermissionDenied
from actors.identity import Principal
from actors.runtime import Actor, Message, handler
from actors.system import ActorKey
from config import Settings
from observability import tracing
from scheduler import registry
from scheduler.broker import JobBroker, JobKeys
from scheduler.dispatch import Dispatcher
from scheduler.events import Publisher
from scheduler.model import REPLAYABLE, Change, Job, JobEvent, JobState
from scheduler.records import Records
from storage import jobs
from storage.batching import GroupCommit
from storage.jobs import NewJob
from storage.postgres import Connection, ReplicaSet
from storage.redis import open_redis

REPLAY_LIMIT = 1000


def is_staff(principal: Principal) -> bool:
    """Staff see every job; everyone else only their own."""
    return permits(principal.roles, "jobs:manage")


def may_see_job(principal: Principal, owner_id: str | None) -> bool:
    """A job is its owner's and staff's; to anyone else it does not exist."""
    return is_staff(principal) or owner_id == principal.user_id


def may_submit(principal: Principal, permission: str | None) -> bool:
    """A job type names the permission its submitters need; None: only the system submits it."""
    return permission is not None and permits(principal.roles, permission)


# -- messages --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submitted:
    job: Job
    replayed: bool


@dataclass(frozen=True, slots=True)
class SubmitJob(Message[Submitted]):
    principal: Principal
    type: str
    params: dict[str, Any]
    idempotency_key: str | None = None
    delay_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class GetJob(Message[Job]):
    principal: Principal
    job_id: UUID


@dataclass(frozen=True, slots=True)
class JobPage:
    items: list[Job]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ListJobs(Message[JobPage]):
    principal: Principal
    states: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    cursor: str | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class CancelJob(Message[Job]):
    principal: Principal
    job_id: UUID


@dataclass(frozen=True, slots=True)
class ReplayJob(Message[Job]):
    principal: Principal
    job_id: UUID


@dataclass(frozen=True, slots=True)
class EventsSince(Message[list[JobEvent]]):
    """Events after `since` that this caller may see: of `job_ids`, of the caller's own jobs
    (`mine`), or (staff) of whole `topics`. Answers at most `REPLAY_LIMIT`, oldest first."""

    principal: Principal
    since: int
    job_ids: tuple[UUID, ...] = ()
    mine: bool = False
    topics: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VisibleJobs(Message[frozenset[UUID]]):
    """Which of `job_ids` the caller may watch."""

    principal: Principal
    job_ids: tuple[UUID, ...]


# -- the actor -------------------------------------------------------------------------------


class JobsActor(Actor):
    def __init__(self, settings: Settings, replicas: ReplicaSet) -> None:
        self.settings = settings
        self.replicas = replicas
        self.keys = JobKeys(settings.redis_namespace)
        self._stack = AsyncExitStack()
        self._relay: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        s = self.settings
        registry.load(s.job_modules)
        self.db = await self._stack.enter_async_context(pools.database(s, self.replicas, "jobs"))
        self.redis = await self._stack.enter_async_context(
            open_redis(s.redis_dsn, name="jobs", size=s.redis_pool_size)
        )
        self.broker = JobBroker(s.redis_dsn, self.keys, s.job_topics, pool_size=8)
        self._stack.push_async_callback(self.broker.close)
        await self.broker.ensure_groups()
        self.dispatcher = Dispatcher(
            Records(self.db, Publisher(self.redis, self.keys.events)),
            self.broker,
            s.job_max_attempts,
        )
        self._submissions: GroupCommit[NewJob, Record | None] = GroupCommit(
            self._submit_many, name="submit"
        )
        self._relay = asyncio.create_task(
            self.dispatcher.relay(s.job_poll_interval), name="jobs:relay"
        )

    async def on_stop(self) -> None:
        if self._relay is not None:
            self._relay.cancel()
            await asyncio.gather(self._relay, return_exceptions=True)
        await self._submissions.close()
        await self._stack.aclose()

    # -- submitting -------------------------------------------------------------------------

    @handler
    async def submit(self, message: SubmitJob) -> Submitted:
        job_type = registry.REGISTRY.get(message.type)
        if job_type is None:
            raise InvalidInput("unknown job type", [FieldError("type", "no such job type")])
        if not may_submit(message.principal, job_type.permission):
            raise PermissionDenied(f"you may not submit {job_type.name} jobs")
        params = job_type.parse(message.params).model_dump(mode="json", by_alias=True)
        digest = _request_hash(message.type, params, message.delay_seconds)
        owner = message.principal.user_id
        key = message.idempotency_key
        if key is not None:
            earlier = await self.db.write(jobs.find_idempotent, owner, key)
            if earlier is not None:
                return _replayed(earlier, digest)
        run_at = None
        if message.delay_seconds:
            run_at = datetime.now(UTC) + timedelta(seconds=message.delay_seconds)
        new = NewJob(
            id=uuid.uuid4(),
            type=job_type.name,
            topic=job_type.topic,
            owner_id=owner,
            params=params,
            max_attempts=job_type.max_attempts or self.settings.job_max_attempts,
            idempotency_key=key,
            request_hash=digest if key else None,
            run_at=run_at,
            labels=tracing.inject(),  # here, in the request's context (batches mix requests)
        )
        row = await self._submissions.submit(new)
        if row is None:  # the same key won a race a moment ago
            earlier = await self.db.write(jobs.find_idempotent, owner, key)  # type: ignore[arg-type]
            if earlier is None:
                raise Conflict("a request with this Idempotency-Key is in progress")
            return _replayed(earlier, digest)
        return Submitted(Job.from_record(row), replayed=False)

    async def _submit_many(self, new_jobs: list[NewJob]) -> list[Record | None]:
        rows = {row["id"]: row for row in await self.dispatcher.submit(new_jobs)}
        return [rows.get(job.id) for job in new_jobs]

    # -- reading ----------------------------------------------------------------------------

    @handler
    async def get(self, message: GetJob) -> Job:
        return await self._visible(message.principal, message.job_id)

    async def _visible(self, principal: Principal, job_id: UUID) -> Job:
        # Read from the primary: a client polls right after submitting, before replicas catch up.
        async with self.db.primary() as conn:
            row = await jobs.get_job(conn, job_id)
        if row is None or not may_see_job(principal, row["owner_id"]):
            raise NotFound("no such job")
        return Job.from_record(row)

    @handler
    async def list(self, message: ListJobs) -> JobPage:
        before = _decode_cursor(message.cursor) if message.cursor else None
        staff = is_staff(message.principal)
        rows = await self.db.read(
            jobs.list_jobs,
            owner_id=None if staff else message.principal.user_id,
            states=message.states or None,
            topics=message.topics or None,
            before=before,
            limit=message.limit + 1,
        )
        items = [Job.from_record(row) for row in rows[: message.limit]]
        more = len(rows) > message.limit
        return JobPage(items, _encode_cursor(items[-1]) if more and items else None)

    @handler
    async def events(self, message: EventsSince) -> list[JobEvent]:
        principal = message.principal
        if message.topics and not is_staff(principal):
            raise PermissionDenied("only staff may watch whole topics")
        async with self.db.primary() as conn:
            found = await jobs.events_since(
                conn,
                message.since,
                job_ids=message.job_ids,
                owner_id=principal.user_id if message.mine else None,
                topics=message.topics,
                limit=REPLAY_LIMIT,
            )
        if is_staff(principal):
            return found
        return [e for e in found if e.owner_id == principal.user_id]

    @handler
    async def visible(self, message: VisibleJobs) -> frozenset[UUID]:
        async with self.db.primary() as conn:
            rows = await conn.fetch(
                "SELECT id, owner_id FROM jobs WHERE id = ANY($1::uuid[])", list(message.job_ids)
            )
        return frozenset(r["id"] for r in rows if may_see_job(message.principal, r["owner_id"]))

    # -- changing ---------------------------------------------------------------------------

    @handler
    async def cancel(self, message: CancelJob) -> Job:
        job = await self._visible(message.principal, message.job_id)
        if job.state.finished:
            raise Conflict(f"the job is {job.state}; only waiting or running jobs can be cancelled")

        async def work(conn: Connection) -> tuple[Record | None, list[Change]]:
            row = await jobs.request_cancel(conn, message.job_id)
            if row is None or row["state"] != JobState.CANCELLED:
                return row, []
            return row, [
                Change(
                    row["id"],
                    row["topic"],
                    row["owner_id"],
                    row["state"],
                    row["progress"],
                    "cancelled",
                )
            ]

        row = await self.dispatcher.records.write(work)
        if row is None:
            raise Conflict("the job finished meanwhile")
        if row["state"] == JobState.RUNNING:  # its worker stops it and records `cancelled`
            await self.redis.publish(self.keys.control, orjson.dumps({"cancel": str(row["id"])}))
        return Job.from_record(row)

    @handler
    async def replay(self, message: ReplayJob) -> Job:
        async def work(conn: Connection) -> tuple[Record | None, list[Change]]:
            row = await jobs.requeue(conn, message.job_id, sorted(REPLAYABLE))
            if row is None:
                return None, []
            return row, [
                Change(row["id"], row["topic"], row["owner_id"], JobState.QUEUED, 0, "replayed")
            ]

        row = await self.dispatcher.records.write(work)
        if row is None:
            async with self.db.primary() as conn:
                exists = await jobs.get_job(conn, message.job_id)
            if exists is None:
                raise NotFound("no such job")
            raise Conflict(
                f"the job is {exists['state']}; only dead, failed or cancelled jobs can be replayed"
            )
        await self.dispatcher.dispatch([row["id"]])
        return Job.from_record(row)


def _request_hash(job_type: str, params: dict[str, Any], delay: float | None) -> str:
    body = orjson.dumps(
        {"type": job_type, "params": params, "delay": delay}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(body).hexdigest()


def _replayed(earlier: Record, digest: str) -> Submitted:
    if earlier["request_hash"] != digest:
        raise InvalidInput("this Idempotency-Key was used with a different request")
    return Submitted(Job.from_record(earlier), replayed=True)


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|")
        return datetime.fromisoformat(created), UUID(job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput(
            "bad cursor", [FieldError("cursor", "not a cursor from this API")]
        ) from None


JOBS = ActorKey[JobsActor]("jobs")
