"""Job types for the tests (loaded with `JOB_MODULES=tests.jobs`): each shows one behaviour."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from scheduler.context import JobContext
from scheduler.registry import PermanentFailure, job_type
from server.routing import Input


class Steps(Input):
    steps: int = 5
    pause: float = 0.05
    fail_times: int = 0
    marker: str = ""


async def _count_run(ctx: JobContext, marker: str) -> int:
    """Counts runs per marker in Redis, so a test sees how often a handler really ran."""
    if not marker:
        return 0
    return int(await ctx.resources.redis.incr(f"test-runs:{marker}"))


@job_type("test_steps", topic="default", params=Steps, permission="jobs:submit", max_attempts=4)
async def steps(ctx: JobContext, params: Steps) -> dict[str, Any]:
    """Reports progress step by step; fails its first `fail_times` attempts."""
    runs = await _count_run(ctx, params.marker)
    if ctx.attempt <= params.fail_times:
        raise RuntimeError(f"planned failure {ctx.attempt}")
    for step in range(1, params.steps + 1):
        await asyncio.sleep(params.pause)
        await ctx.progress(step * 100 // params.steps, f"step {step} of {params.steps}")
    return {"steps": params.steps, "attempt": ctx.attempt, "runs": runs}


@job_type("test_crash", topic="default", params=Steps, permission="jobs:submit", max_attempts=3)
async def crash(ctx: JobContext, params: Steps) -> dict[str, int]:
    """Kills its own worker while `test-poison:<marker>` is set: a poison job."""
    runs = await _count_run(ctx, params.marker)
    if await ctx.resources.redis.exists(f"test-poison:{params.marker}"):
        os.kill(os.getpid(), signal.SIGKILL)
    return {"runs": runs}


@job_type("test_invalid", topic="default", params=Steps, permission="jobs:submit")
async def invalid(ctx: JobContext, params: Steps) -> None:
    raise PermanentFailure("this job can never succeed")


@job_type("test_noop", topic="default", params=Input, permission="jobs:submit")
async def noop(ctx: JobContext, params: Input) -> None:
    return None
