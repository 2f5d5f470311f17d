"""Tracing with OpenTelemetry: one trace per request, through actors, SQL, Redis and jobs.

Off by default (`TRACING_EXPORTER=none`): then `tracer` is None, no middleware is installed and
no client is wrapped, so the request path pays one `is None` test per actor message. On, spans
go to OTLP/HTTP (`OTEL_EXPORTER_OTLP_ENDPOINT`, default `http://localhost:4318`) or to stdout,
in batches from a background thread; `TRACING_SAMPLE_RATIO` of new traces are kept, and a
caller's sampling decision (`traceparent`) is respected.

What makes spans where:

* HTTP: `server.middleware.traced`, a server span per request named `METHOD /route/{template}`;
* actors: `actors.runtime`, a span per message handled, in the sender's trace;
* SQL: `storage.postgres`, a client span per statement (asyncpg's query logger);
* Redis: `storage.redis.TracedRedis`, a client span per command or pipeline;
* jobs: the enqueuing side puts `inject()` into the job's labels; the worker continues the
  trace with `span(name, context=extract(labels), kind=SpanKind.CONSUMER)`.

SQL and Redis spans are only made inside a sampled trace: statements a background loop runs on
its own (the replica health poll) are not traced.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

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
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, Tracer

log = logging.getLogger("backend.tracing")

Exporter = Literal["none", "console", "otlp"]

# The process's tracer, or None when tracing is off. Instrumentation reads it as
# `tracing.tracer` (never `from ... import tracer`), so `configure` can change it.
tracer: Tracer | None = None
_provider: TracerProvider | None = None
_NO_SPAN: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)


def configure(
    exporter: Exporter | SpanExporter,
    *,
    sample_ratio: float = 1.0,
    service_name: str = "backend",
) -> None:
    """Set this process's tracing up (replacing any earlier set-up).

    `exporter` is a name from the configuration, or a `SpanExporter` instance, which then gets
    every span synchronously (tests pass an in-memory exporter).
    """
    global tracer, _provider
    shutdown()
    if exporter == "none":
        return
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    if isinstance(exporter, SpanExporter):
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_exporter(exporter)))
    _provider = provider
    tracer = provider.get_tracer("backend")
    log.info("tracing on", extra={"exporter": str(exporter), "sample_ratio": sample_ratio})


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def shutdown() -> None:
    """Flush spans still queued and turn tracing off."""
    global tracer, _provider
    provider, _provider, tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    context: Context | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Span]:
    """`with span(name) as s:` a span, current inside the block (a do-nothing one when
    tracing is off). Exceptions do not mark it failed by themselves: call `failed`."""
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


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
    `span(..., context=extract(labels), kind=SpanKind.CONSUMER)` in the worker."""
    return propagate.extract(labels)


def log_fields() -> dict[str, str] | None:
    """The current sampled span's ids, for log lines; None outside one."""
    if tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.trace_flags.sampled:
        return None
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


def recording() -> bool:
    """Whether the current span is being recorded: client spans are made only then."""
    return tracer is not None and trace.get_current_span().is_recording()
