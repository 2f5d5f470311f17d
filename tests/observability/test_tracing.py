"""Tracing: one trace from the HTTP request through the actor to SQL and Redis; the caller's
trace continued; sampling; trace context carried in a job's labels; nothing when off."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as official_encoding,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from redis.asyncio import Redis

from config import Settings
from observability import otlp, tracing
from server.app import create_app
from storage.redis import Keys, TracedRedis, open_redis
from tests.conftest import eventually

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"

AppClient = Callable[[web.Application], Awaitable[TestClient]]


@pytest.fixture
async def traced(spans: InMemorySpanExporter, settings: Settings, aiohttp_client: AppClient):
    """An app built while tracing is on (with every span kept)."""
    return await aiohttp_client(await create_app(settings))


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in spans.get_finished_spans() if span.name == name]


def children(spans: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    return [
        span
        for span in spans.get_finished_spans()
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    ]


async def test_one_trace_from_the_request_through_the_actor_to_redis(
    traced: TestClient, spans: InMemorySpanExporter
) -> None:
    response = await traced.get("/readyz", headers={"X-Request-ID": "trace-me-1"})
    assert response.status == 200

    [request] = named(spans, "GET /readyz")
    assert request.kind is SpanKind.SERVER
    assert request.parent is None
    assert request.attributes["http.route"] == "/readyz"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["request.id"] == "trace-me-1"
    assert request.resource.attributes["service.name"] == "backend-test"

    [actor] = named(spans, "health CheckReadiness")
    assert actor.parent.span_id == request.context.span_id
    assert actor.attributes["actor.name"] == "health"
    [redis] = [s for s in children(spans, actor) if s.attributes.get("db.system.name") == "redis"]
    assert redis.name == "PING"
    assert redis.kind is SpanKind.CLIENT
    assert {s.context.trace_id for s in [request, actor, redis]} == {request.context.trace_id}


async def test_a_sign_up_is_one_trace_down_to_its_inserts(
    traced: TestClient, spans: InMemorySpanExporter
) -> None:
    password = "Correct-Horse-" + secrets.token_hex(6)
    account = {"email": f"trace-{secrets.token_hex(4)}@example.com", "password": password}
    response = await traced.post("/api/v1/auth/register", json={**account, "name": "Trace"})
    assert response.status == 201

    [request] = named(spans, "POST /api/v1/auth/register")
    [actor] = named(spans, "accounts Register")
    assert actor.parent.span_id == request.context.span_id

    async def inserted() -> bool:
        return any(s.name == "COMMIT" for s in children(spans, actor))

    await eventually(inserted)
    sql = [s for s in children(spans, actor) if s.attributes.get("db.system.name") == "postgresql"]
    assert any(s.attributes["db.query.text"].startswith("INSERT INTO users") for s in sql)
    assert {"BEGIN", "INSERT", "COMMIT"} <= {s.name for s in sql}
    assert all(s.kind is SpanKind.CLIENT and s.end_time > s.start_time for s in sql)
    assert all(s.attributes["db.namespace"] and s.attributes["server.port"] for s in sql)
    everything = spans.get_finished_spans()
    assert {s.context.trace_id for s in everything} == {request.context.trace_id}
    assert password not in str([s.attributes for s in everything])  # arguments never recorded


async def test_the_callers_trace_is_continued(
    traced: TestClient, spans: InMemorySpanExporter
) -> None:
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    assert (await traced.get("/livez", headers={"traceparent": traceparent})).status == 200
    [request] = named(spans, "GET /livez")
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert format(request.parent.span_id, "016x") == PARENT_ID


async def test_errors_mark_the_request_span(traced: TestClient, spans: InMemorySpanExporter):
    assert (await traced.get("/no/such/route")).status == 404
    [span] = named(spans, "GET unmatched")
    assert span.attributes["http.response.status_code"] == 404
    assert span.status.status_code is StatusCode.UNSET  # a client error is not a failure


@pytest.fixture
async def sampled_at(
    settings: Settings, aiohttp_client: AppClient
) -> AsyncIterator[Callable[[float], Awaitable[tuple[TestClient, InMemorySpanExporter]]]]:
    """Build an app whose process records `ratio` of new traces."""

    async def build(ratio: float) -> tuple[TestClient, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        tracing.configure(exporter, sample_ratio=ratio)
        return await aiohttp_client(await create_app(settings)), exporter

    yield build
    tracing.shutdown()


async def test_sampling_respects_the_caller(sampled_at) -> None:
    client, exporter = await sampled_at(0.0)
    assert (await client.get("/readyz")).status == 200
    account = {"email": f"u-{secrets.token_hex(4)}@example.com", "password": "P-" + "x" * 12}
    response = await client.post("/api/v1/auth/register", json={**account, "name": "U"})
    assert response.status == 201
    assert exporter.get_finished_spans() == ()  # not sampled: nothing below either
    sampled = f"00-{TRACE_ID}-{PARENT_ID}-01"
    assert (await client.get("/livez", headers={"traceparent": sampled})).status == 200
    assert [span.name for span in exporter.get_finished_spans()] == ["GET /livez"]


async def test_the_ratio_of_new_traces_is_kept(sampled_at) -> None:
    client, exporter = await sampled_at(0.5)
    for _ in range(200):
        assert (await client.get("/livez")).status == 200
    assert 60 < len(exporter.get_finished_spans()) < 140  # 100 expected; 6 sigma either side


async def test_spans_are_made_only_inside_a_recorded_trace(spans: InMemorySpanExporter) -> None:
    with tracing.span("orphan") as orphan:  # not a root, no trace to join
        assert orphan is not None
        assert not orphan.is_recording()
    with tracing.span("request", root=True), tracing.span("inner") as inner:
        assert inner.is_recording()
    assert [s.name for s in spans.get_finished_spans()] == ["inner", "request"]


async def test_trace_context_travels_in_job_labels(spans: InMemorySpanExporter) -> None:
    with tracing.span("enqueue", root=True) as enqueue:
        labels = tracing.inject({"topic": "reports"})
    assert labels["topic"] == "reports"
    assert labels["traceparent"].split("-")[1] == format(
        enqueue.get_span_context().trace_id, "032x"
    )

    # The worker's side, in another process: the job's span continues the request's trace.
    with tracing.span(
        "sales_report", context=tracing.extract(labels), kind=SpanKind.CONSUMER, root=True
    ):
        pass
    [job] = named(spans, "sales_report")
    assert job.context.trace_id == enqueue.get_span_context().trace_id
    assert job.parent.span_id == enqueue.get_span_context().span_id


async def test_redis_commands_and_pipelines_get_spans(
    spans: InMemorySpanExporter, settings: Settings
) -> None:
    key = Keys(settings.redis_namespace)
    async with open_redis(settings.redis_dsn, name="tracetest") as redis:
        assert isinstance(redis, TracedRedis)
        await redis.ping()  # outside any trace: no span of its own
        with tracing.span("work", root=True):
            await redis.set(key("trace", "secret-key"), "1", ex=60)
            async with redis.pipeline() as pipe:
                await pipe.get(key("trace", "secret-key")).incr(key("trace", "count")).execute()
        await redis.delete(key("trace", "secret-key"), key("trace", "count"))
    assert [s.name for s in spans.get_finished_spans()] == ["SET", "MULTI", "work"]
    [multi] = named(spans, "MULTI")
    assert multi.attributes["db.operation.batch.size"] == 2
    assert "secret-key" not in str([s.attributes for s in spans.get_finished_spans()])


async def test_tracing_off_costs_no_instrumentation(settings: Settings, app: web.Application):
    assert tracing.tracer is None
    assert not any(m.__qualname__.startswith("traced") for m in app.middlewares)
    async with open_redis(settings.redis_dsn, name="plain") as redis:
        assert type(redis) is Redis
    with tracing.span("nothing") as span:
        assert not span.is_recording()
    assert tracing.inject({"a": "b"}) == {"a": "b"}
    assert tracing.log_fields() is None


def _spans_of_every_shape(spans: InMemorySpanExporter) -> tuple[ReadableSpan, ...]:
    """Spans with every kind of field the encoder writes."""
    remote = f"00-{TRACE_ID}-{PARENT_ID}-01"
    caller = tracing.extract({"traceparent": remote, "tracestate": "vendor=1,other=two"})
    with tracing.span("GET /things/{id}", kind=SpanKind.SERVER, context=caller, root=True) as top:
        top.set_attributes({"http.route": "/things/{id}", "retries": 3, "ratio": 0.25})
        top.set_attribute("cached", False)
        top.set_attribute("tags", ("a", "b"))
        top.set_attribute("big", -(2**40))
        with tracing.span("child", attributes={"bytes": b"\x00\x01"}) as child:
            child.add_event("checkpoint", {"step": 1})
            child.add_link(top.get_span_context(), {"why": "retry of"})
            tracing.failed(child, ValueError("no such thing"))
        with tracing.span("quiet") as quiet:
            quiet.set_status(StatusCode.OK)
            quiet.set_status(StatusCode.ERROR, "too late: OK is final")
    return spans.get_finished_spans()


def test_spans_are_encoded_as_the_official_otlp_encoder_does(spans: InMemorySpanExporter):
    finished = _spans_of_every_shape(spans)
    ours = ExportTraceServiceRequest.FromString(otlp.encode_spans(finished))
    assert ours == official_encoding(finished)
    [scope] = ours.resource_spans[0].scope_spans
    assert [span.name for span in scope.spans] == ["child", "quiet", "GET /things/{id}"]


def test_a_failure_is_recorded_as_the_sdk_records_it(spans: InMemorySpanExporter) -> None:
    child, quiet, top = finished = _spans_of_every_shape(spans)
    assert child.status.status_code is StatusCode.ERROR
    assert child.status.description == "ValueError"
    [checkpoint, exception] = child.events
    assert checkpoint.attributes == {"step": 1}
    assert exception.name == "exception"
    assert exception.attributes["exception.type"] == "ValueError"
    assert exception.attributes["exception.message"] == "no such thing"
    assert quiet.status.status_code is StatusCode.OK
    assert top.context.trace_id == int(TRACE_ID, 16)
    assert top.context.trace_state.to_header() == "vendor=1,other=two"
    assert top.parent.is_remote
    assert child.parent.span_id == top.context.span_id
    assert not child.parent.is_remote
    assert len({span.context.span_id for span in finished}) == 3


async def test_the_otlp_exporter_delivers_to_a_collector(
    spans: InMemorySpanExporter, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    received: list[ExportTraceServiceRequest] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(ExportTraceServiceRequest.FromString(await request.read()))
        return web.Response(content_type="application/x-protobuf")

    collector = web.Application()
    collector.router.add_post("/v1/traces", collect)
    server = await aiohttp_server(collector)
    finished = _spans_of_every_shape(spans)
    exporter = otlp.Exporter(endpoint=str(server.make_url("/v1/traces")))
    try:
        assert await asyncio.to_thread(exporter.export, finished) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert received == [official_encoding(finished)]
