"""Tracing with OpenTelemetry: one trace per request, through actors, SQL, Redis and jobs.

Off by default (`TRACING_EXPORTER=none`): then `tracer` is None, no middleware is installed and
no client is wrapped, so the request path pays one `is None` test per actor message. On, spans
go to OTLP/HTTP (`OTEL_EXPORTER_OTLP_ENDPOINT`, default `http://localhost:4318`) or to stdout,
in batches from a background thread.

Sampling is decided once per trace, where it starts, before any OpenTelemetry object is made:
`TRACING_SAMPLE_RATIO` of new traces are recorded, a caller's decision (`traceparent`) is
followed, and everything below an unrecorded root (actor messages, SQL, Redis) costs one check.

What makes spans where:

* HTTP: `server.middleware.traced`, a server span per request named `METHOD /route/{template}`;
* actors: `actors.runtime`, a span per message handled, in the sender's trace;
* SQL: `storage.postgres`, a client span per statement on a `Database` connection (asyncpg's
  query logger, on connections taken inside a recorded trace);
* Redis: `storage.redis.TracedRedis`, a client span per command or pipeline;
* jobs: the enqueuing side puts `inject()` into the job's labels; the worker continues the
  trace with `span(name, context=extract(labels), kind=SpanKind.CONSUMER, root=True)`.

Only HTTP requests and jobs start traces (`span(..., root=True)`); every other span is made
inside a recorded trace only, so work a background loop does on its own (the replica health
poll) is not traced. A job enqueued by an unrecorded request starts its own trace, at the
ratio, in the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from random import random
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, Tracer

log = logging.getLogger("backend.tracing")

Exporter = Literal["none", "console", "otlp"]

# The process's tracer, or None when tracing is off. Instrumentation reads it as
# `tracing.tracer` (never `from ... import tracer`), so `configure` can change it.
tracer: Tracer | None = None
_provider: TracerProvider | None = None
_ratio = 1.0
_recorded: ContextVar[bool] = ContextVar("trace_recorded", default=False)
NO_SPAN: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)


def configure(
    exporter: Exporter | SpanExporter,
    *,
    sample_ratio: float = 1.0,
    service_name: str = "backend",
    endpoint: str | None = None,
) -> None:
    """Set this process's tracing up (replacing any earlier set-up).

    `exporter` is a name from the configuration, or a `SpanExporter` instance, which then gets
    every span synchronously (tests pass an in-memory exporter). `endpoint` is the OTLP/HTTP
    collector's base URL (default: the OpenTelemetry environment variables, or localhost).
    """
    global tracer, _provider, _ratio
    shutdown()
    if exporter == "none":
        return
    _ratio = sample_ratio
    provider = TracerProvider(
        resource=_Resource.of(Resource.create({"service.name": service_name})),
        # `begins` has decided already: what reaches the SDK is to be recorded.
        sampler=ParentBased(ALWAYS_ON),
    )
    if isinstance(exporter, SpanExporter):
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_exporter(exporter, endpoint)))
    _provider = provider
    tracer = provider.get_tracer("backend")
    log.info("tracing on", extra={"exporter": str(exporter), "sample_ratio": sample_ratio})


class _Resource(Resource):
    """A resource that hashes once: the OTLP encoder groups every span by its resource, and
    `Resource.__hash__` serialises the attributes to JSON each time."""

    _hash: int

    @classmethod
    def of(cls, resource: Resource) -> _Resource:
        made = cls(resource.attributes, resource.schema_url)
        made._hash = hash(resource)
        return made

    def __hash__(self) -> int:
        return self._hash


def _exporter(name: str, endpoint: str | None) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if endpoint is None:
        return OTLPSpanExporter()
    return OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")


def shutdown() -> None:
    """Flush spans still queued and turn tracing off."""
    global tracer, _provider
    provider, _provider, tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def begins(context: Context | None = None, *, root: bool = False) -> bool:
    """Whether a span started here is recorded: inside a recorded trace (the current one, or
    the caller's in `context`), or, for a `root` with no trace to join, for
    `TRACING_SAMPLE_RATIO` of calls. Cheap when it says no, which is most of the time."""
    if tracer is None:
        return False
    if context is None:
        if _recorded.get():
            return True
    else:
        parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid:
            return parent.trace_flags.sampled
    return root and random() < _ratio


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    context: Context | None = None,
    attributes: Mapping[str, Any] | None = None,
    root: bool = False,
) -> AbstractContextManager[Span]:
    """`with span(name) as s:` a span, current inside the block, child of the current span (or
    of the caller's in `context`), if `begins(context, root=root)`; otherwise `NO_SPAN`, which
    records nothing. Exceptions do not mark it failed: call `failed`."""
    if not begins(context, root=root):
        return NO_SPAN
    return start(name, kind=kind, context=context, attributes=attributes)


def start(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    context: Context | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Span]:
    """A recorded span, once `begins` said so (callers that build costly names or attributes
    ask first); `span` does both."""
    assert tracer is not None
    return _Recording(
        tracer.start_span(
            name,
            context=context,
            kind=kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
    )


class _Recording:
    """The span's block: the span current inside it (and `_recorded` set, which `begins`,
    `recording` and `log_fields` read instead of asking OpenTelemetry), ended on the way out.
    What `start_as_current_span` does, without its two generator-based context managers."""

    __slots__ = ("_flag", "_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span

    def __enter__(self) -> Span:
        self._flag = _recorded.set(True)
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, *exc_info: object) -> None:
        otel_context.detach(self._token)
        _recorded.reset(self._flag)
        self._span.end()


def failed(span: Span, error: BaseException) -> None:
    """Mark `span` as failed by `error` (the type and message, no stack locals)."""
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))


def inject(labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """`labels` plus the current trace context (W3C `traceparent`, `tracestate`).

    The enqueuing side of a job calls it for the job's labels, so the worker's spans continue
    the request's trace. Nothing is added when tracing is off or the trace is not sampled.
    """
    carrier = dict(labels or {})
    if tracer is not None:
        propagate.inject(carrier)
    return carrier


def extract(labels: Mapping[str, Any]) -> Context:
    """The trace context carried in a job's labels (empty when there is none): pass it as
    `span(..., context=extract(labels), kind=SpanKind.CONSUMER, root=True)` in the worker."""
    return propagate.extract(labels)


def log_fields() -> dict[str, str] | None:
    """The current recorded span's ids, for log lines; None outside one."""
    if not _recorded.get():
        return None
    context = trace.get_current_span().get_span_context()
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


def recording() -> bool:
    """Whether the code runs inside a recorded span: child spans are made only then."""
    return _recorded.get() and tracer is not None
