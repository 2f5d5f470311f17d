"""The benchmark's job type (loaded with `JOB_MODULES=bench.job_types`)."""

from __future__ import annotations

from scheduler.context import JobContext
from scheduler.registry import NoParams, job_type


@job_type("bench_noop", topic="default", params=NoParams, permission="jobs:submit")
async def noop(ctx: JobContext, params: NoParams) -> None:
    """Does nothing: what is measured is the queue, the records and the events around it."""
