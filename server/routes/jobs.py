"""Background jobs over REST: submit, follow, list, cancel, and (admin) replay."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import pydantic
from aiohttp import web
from pydantic import Field

from actors.errors import FieldError, InvalidInput, Unauthenticated
from actors.identity import Principal
from actors.jobs import JOBS, CancelJob, GetJob, ListJobs, ReplayJob, SubmitJob
from scheduler.model import Job
from server.routing import Input, Routes, json_response
from server.state import ACTORS, PRINCIPAL

routes = Routes("/api/v1", tag="jobs")

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
StateName = Literal["queued", "running", "retrying", "succeeded", "failed", "dead", "cancelled"]


class JobSubmission(Input):
    type: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    delay_seconds: float | None = Field(None, ge=0, le=7 * 86400)


class JobQuery(Input):
    state: list[StateName] = Field(default_factory=list)
    topic: list[Annotated[str, Field(max_length=32)]] = Field(default_factory=list)
    cursor: str | None = Field(None, max_length=200)
    limit: int = Field(50, ge=1, le=200)


class JobView(pydantic.BaseModel):
    id: UUID
    type: str
    topic: str
    state: StateName
    attempts: int
    max_attempts: int
    progress: int
    message: str | None
    result: Any
    error: str | None
    cancel_requested: bool
    seq: int = Field(description="the job's latest event; subscribe with `since` from here")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    run_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(
            id=job.id,
            type=job.type,
            topic=job.topic,
            state=job.state.value,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            progress=job.progress,
            message=job.progress_message,
            result=job.result,
            error=job.error,
            cancel_requested=job.cancel_requested,
            seq=job.seq,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            run_at=job.run_at,
        )


class JobList(pydantic.BaseModel):
    items: list[JobView]
    next_cursor: str | None


def principal_of(request: web.Request) -> Principal:
    principal = request.get(PRINCIPAL)
    if principal is None:
        raise Unauthenticated("this route needs a bearer token")
    return principal


@routes.post("/jobs", access="jobs:submit", status=202)
async def submit_job(request: web.Request, body: JobSubmission) -> JobView:
    """Submit a job: 202 with its id; follow it at its URL or over the WebSocket.

    With an `Idempotency-Key` header, a retry of the same request answers the same job
    (`Idempotent-Replayed: true`); the same key with a different request is refused (422)."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise InvalidInput(
            "bad Idempotency-Key",
            [FieldError("Idempotency-Key", "1 to 128 printable ASCII characters")],
        )
    submitted = await request.app[ACTORS][JOBS].ask(
        SubmitJob(principal_of(request), body.type, body.params, key, body.delay_seconds)
    )
    view = JobView.of(submitted.job)
    headers = {"Location": f"/api/v1/jobs/{view.id}"}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(view, status=202, headers=headers)  # type: ignore[return-value]


@routes.get("/jobs/{job_id}", access="jobs:submit")
async def get_job(request: web.Request, job_id: UUID) -> JobView:
    """A job's state, attempts, progress, and its result or error."""
    return JobView.of(await request.app[ACTORS][JOBS].ask(GetJob(principal_of(request), job_id)))


@routes.get("/jobs", access="jobs:submit")
async def list_jobs(request: web.Request, query: JobQuery) -> JobList:
    """The caller's jobs, newest first (staff: everyone's); filter by state and topic."""
    page = await request.app[ACTORS][JOBS].ask(
        ListJobs(
            principal_of(request),
            tuple(query.state),
            tuple(query.topic),
            query.cursor,
            query.limit,
        )
    )
    return JobList(items=[JobView.of(job) for job in page.items], next_cursor=page.next_cursor)


@routes.post("/jobs/{job_id}/cancel", access="jobs:submit", status=202)
async def cancel_job(request: web.Request, job_id: UUID) -> JobView:
    """Cancel a waiting job at once, or stop a running one (it turns `cancelled` shortly)."""
    job = await request.app[ACTORS][JOBS].ask(CancelJob(principal_of(request), job_id))
    return JobView.of(job)


@routes.get("/admin/jobs/dead", access="jobs:manage")
async def dead_letters(request: web.Request, query: JobQuery) -> JobList:
    """The dead-letter view: jobs that used up their attempts, newest first."""
    page = await request.app[ACTORS][JOBS].ask(
        ListJobs(principal_of(request), ("dead",), tuple(query.topic), query.cursor, query.limit)
    )
    return JobList(items=[JobView.of(job) for job in page.items], next_cursor=page.next_cursor)


@routes.post("/admin/jobs/{job_id}/replay", access="jobs:replay", status=202)
async def replay_job(request: web.Request, job_id: UUID) -> JobView:
    """Send a dead, failed or cancelled job back to the queue with a fresh attempt budget."""
    job = await request.app[ACTORS][JOBS].ask(ReplayJob(principal_of(request), job_id))
    return JobView.of(job)
