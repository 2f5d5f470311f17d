"""Trace context carried from the request that enqueues a job to the worker that runs it.

The enqueuing side puts `observability.tracing.inject()` into the job message's labels (taken
in the request's own context, when the job is submitted); in the worker, `LabelsMiddleware`
keeps the labels of the message being run, and `job_span` runs the job in a span that
continues that trace. With tracing off, both cost next to nothing.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.trace import Span, SpanKind
from taskiq import TaskiqMessage, TaskiqMiddleware

from observability import tracing

_labels: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "job_labels", default=None
)


class LabelsMiddleware(TaskiqMiddleware):
    """Keeps each delivered message's labels where `job_span` finds them."""

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        _labels.set(message.labels)
        return message


@contextmanager
def job_span(job_type: str, job_id: str, attempt: int) -> Iterator[Span]:
    """A span for one attempt of a job, in the trace of the request that enqueued it."""
    labels = _labels.get() or {}
    with tracing.span(
        job_type,
        kind=SpanKind.CONSUMER,
        context=tracing.extract(labels),
        root=True,
        attributes={"job.id": job_id, "job.type": job_type, "job.attempt": attempt},
    ) as span:
        yield span
