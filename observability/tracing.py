"""Tracing with OpenTelemetry: one trace per request, through actors, SQL, Redis and jobs.

Off by default (`TRACING_EXPORTER=none`): then `tracer` is None, no middleware is installed and
no client is wrapped, so the request path pays one `is None` test per actor message. On, spans
go to OTLP/HTTP (`OTEL_EXPORTER_OTLP_ENDPOINT`, default `http://localhost:4318`) or to stdout,
in batches from a background thread (the SDK's `BatchSpanProcessor` and exporters; OTLP's
protobuf written by `observability.otlp`).

Sampling is decided once per trace, where it starts, before any OpenTelemetry object is made:
`TRACING_SAMPLE_RATIO` of new traces are recorded, a caller's decision (`traceparent`) is
followed, and everything below an unrecorded root (actor messages, SQL, Redis) costs one check.
Recorded spans are made by this module's `Tracer`, a few fields each until they end as the
SDK's `ReadableSpan`: see there for why not the SDK's own tracer.

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
import traceback
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from random import getrandbits, random
from time import time_ns
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    INVALID_SPAN,
    Link,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

log = logging.getLogger("backend.tracing")

Exporter = Literal["none", "console", "otlp"]

# The process's tracer, or None when tracing is off. Instrumentation reads it as
# `tracing.tracer` (never `from ... import tracer`), so `configure` can change it.
tracer: Tracer | None = None
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
    global tracer, _ratio
    shutdown()
    if exporter == "none":
        return
    _ratio = sample_ratio
    processor = (
        SimpleSpanProcessor(exporter)
        if isinstance(exporter, SpanExporter)
        else BatchSpanProcessor(_exporter(exporter, endpoint))
    )
    resource = _Resource.of(Resource.create({"service.name": service_name}))
    tracer = Tracer(processor, resource)
    log.info("tracing on", extra={"exporter": str(exporter), "sample_ratio": sample_ratio})


class Tracer:
    """Makes the spans `begins` decided to record, and hands each, once ended, to the SDK's
    span processor as a `ReadableSpan`, whence the SDK's exporters take it.

    Not the SDK's `Tracer`: its spans are general-purpose (a lock each, attribute limits and
    cleaning, a sampler consulted per span, processors called at the start too) and cost about
    16 us each, made and ended, on a request that costs 150 us; these cost about 8. Here the
    sampling decision was made once per trace, attributes are this service's own, and spans
    live on one event loop, so a span is a few fields until it ends. The processors this
    service uses act at the end only."""

    __slots__ = ("_processor", "_resource", "_scope")

    def __init__(self, processor: SpanProcessor, resource: Resource) -> None:
        self._processor = processor
        self._resource = resource
        self._scope = InstrumentationScope("backend")

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        start_time: int | None = None,
    ) -> RecordedSpan:
        """A recorded span, child of the current span (or of the one in `context`)."""
        parent = trace.get_current_span(context).get_span_context()
        return RecordedSpan(
            self, name, parent if parent.is_valid else None, kind, attributes, start_time
        )

    def finish(self, span: RecordedSpan, end_time: int) -> None:
        self._processor.on_end(
            ReadableSpan(
                name=span.name,
                context=span.context,
                parent=span.parent,
                resource=self._resource,
                attributes=span.attributes,
                events=span.events,
                links=span.links,
                kind=span.kind,
                status=span.status,
                start_time=span.start_time,
                end_time=end_time,
                instrumentation_scope=self._scope,
            )
        )

    def shutdown(self) -> None:
        """Export what is still queued."""
        self._processor.shutdown()


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)


class RecordedSpan(Span):
    """A span being recorded: OpenTelemetry's `Span` interface over plain fields."""

    __slots__ = (
        "_tracer",
        "attributes",
        "context",
        "end_time",
        "events",
        "kind",
        "links",
        "name",
        "parent",
        "start_time",
        "status",
    )

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Mapping[str, Any] | None,
        start_time: int | None,
    ) -> None:
        self._tracer = tracer
        self.name = name
        self.parent = parent
        self.kind = kind
        self.context = SpanContext(
            parent.trace_id if parent is not None else getrandbits(128) or 1,
            getrandbits(64) or 1,
            is_remote=False,
            trace_flags=_SAMPLED,
            trace_state=parent.trace_state if parent is not None else None,
        )
        self.attributes: dict[str, Any] = dict(attributes) if attributes else {}
        self.events: list[Event] = []
        self.links: list[Link] = []
        self.status = _UNSET
        self.start_time = start_time or time_ns()
        self.end_time: int | None = None

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.attributes.update(attributes)

    def add_event(
        self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None
    ) -> None:
        self.events.append(Event(name, attributes, timestamp or time_ns()))

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        self.links.append(Link(context, attributes))

    def update_name(self, name: str) -> None:
        self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the specification has it: OK is final, and UNSET changes nothing."""
        if not isinstance(status, Status):
            status = Status(status, description)
        if self.status.status_code is not StatusCode.OK and status.status_code is not (
            StatusCode.UNSET
        ):
            self.status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """An `exception` event, with the attributes the SDK's spans give it."""
        kind = type(exception)
        module = kind.__module__
        self.add_event(
            "exception",
            {
                "exception.type": kind.__qualname__
                if module in (None, "builtins")
                else f"{module}.{kind.__qualname__}",
                "exception.message": str(exception),
                "exception.stacktrace": "".join(traceback.format_exception(exception)),
                "exception.escaped": str(escaped),
                **(attributes or {}),
            },
            timestamp,
        )

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is None:
            self.end_time = end_time or time_ns()
            self._tracer.finish(self, self.end_time)


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
    from observability.otlp import Exporter  # the OTLP libraries load only when used

    if endpoint is None:
        return Exporter()
    return Exporter(endpoint=endpoint.rstrip("/") + "/v1/traces")


def shutdown() -> None:
    """Flush spans still queued and turn tracing off."""
    global tracer
    stopping, tracer = tracer, None
    if stopping is not None:
        stopping.shutdown()


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
    return _Recording(tracer.start_span(name, context=context, kind=kind, attributes=attributes))


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
