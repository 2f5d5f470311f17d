"""Job types: what each job is called, which topic it goes to, what parameters it takes, who
may ask for it, how often it may be tried, and the coroutine that does it.

    @job_type("sales_report", topic="reports", params=ReportParams, permission="jobs:reports")
    async def sales_report(ctx: JobContext, params: ReportParams) -> dict: ...

A handler must be idempotent: a job may start again after its worker died mid-run. It reports
progress with `await ctx.progress(percent, message)`; its return value (JSON) is the result.
Raising `PermanentFailure` fails the job at once; any other exception is retried with backoff
until the type's attempts are used up, and the job is then dead (listed for an admin to replay).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pydantic

from actors.errors import FieldError, InvalidInput, NotFound
from server.routing import Input

if TYPE_CHECKING:
    from scheduler.context import JobContext

P = TypeVar("P", bound=pydantic.BaseModel)

Handler = Callable[["JobContext", P], Awaitable[Any]]


class PermanentFailure(Exception):
    """The job cannot succeed however often it is tried (bad input found late, gone data)."""


class NoParams(Input):
    """For job types that take no parameters."""


@dataclass(frozen=True)
class JobType(Generic[P]):
    name: str
    topic: str
    params: type[P]
    handler: Handler[P]
    # The permission a caller needs to submit this type over the API; None: system jobs only.
    permission: str | None = None
    max_attempts: int | None = None  # None: JOB_MAX_ATTEMPTS
    timeout: float | None = None  # seconds one attempt may take

    def parse(self, params: dict[str, Any]) -> P:
        """Validated parameters, or `InvalidInput` naming each bad field."""
        try:
            return self.params.model_validate(params)
        except pydantic.ValidationError as error:
            raise InvalidInput(
                f"invalid parameters for {self.name}",
                [
                    FieldError(".".join(["params", *map(str, item["loc"])]), item["msg"])
                    for item in error.errors(include_url=False, include_input=False)
                ],
            ) from None


REGISTRY: dict[str, JobType[Any]] = {}


def job_type(
    name: str,
    *,
    topic: str,
    params: type[P],
    permission: str | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
) -> Callable[[Handler[P]], Handler[P]]:
    """Register a handler as the job type `name`."""

    def register(handler: Handler[P]) -> Handler[P]:
        if name in REGISTRY:
            raise ValueError(f"job type {name!r} is registered twice")
        REGISTRY[name] = JobType(name, topic, params, handler, permission, max_attempts, timeout)
        return handler

    return register


def lookup(name: str) -> JobType[Any]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise NotFound(f"no job type named {name!r}") from None


def load(modules: Iterable[str] = ()) -> dict[str, JobType[Any]]:
    """Import the built-in job types and any configured extra modules that register more."""
    for module in ("scheduler.tasks", *modules):
        importlib.import_module(module)
    return REGISTRY
