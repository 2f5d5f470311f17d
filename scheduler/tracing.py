"""Trace context carried from the request that enqueues a job to the worker that runs it.

The hook for the tracing work (issue 7): `outgoing()` returns what goes into a job message's
labels when it is sent; in the worker, `LabelsMiddleware` keeps the labels of the message being
run, and `continued_trace()` wraps the job's run. Until tracing lands, no context is carried
and both cost nothing; then `outgoing` becomes observability's `inject` into a dict and
`continued_trace` a span started from `extract(current_labels())`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from taskiq import TaskiqMessage, TaskiqMiddleware

_labels: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "job_labels", default=None
)


def outgoing() -> dict[str, str]:
    """Labels that carry the current trace context (none until tracing is configured)."""
    return {}


def current_labels() -> dict[str, Any]:
    """The labels of the message this task is running."""
    return _labels.get() or {}


@contextlib.contextmanager
def continued_trace(name: str) -> Iterator[None]:
    """Run a job inside the trace of the request that enqueued it."""
    yield


class LabelsMiddleware(TaskiqMiddleware):
    """Keeps each delivered message's labels where `current_labels()` finds them."""

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        _labels.set(message.labels)
        return message
