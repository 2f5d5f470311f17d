"""A job's spans continue the trace of the request that submitted it, across the queue."""

from __future__ import annotations

import orjson
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis
from taskiq import TaskiqMessage

from config import Settings
from scheduler.broker import JobKeys
from scheduler.tracing import LabelsMiddleware, job_span
from server.app import create_app
from tests.observability.test_tracing import AppClient, named
from tests.people import sign_up


async def test_a_job_run_continues_the_trace_of_the_request_that_submitted_it(
    spans: InMemorySpanExporter, settings: Settings, aiohttp_client: AppClient
) -> None:
    traced = await aiohttp_client(await create_app(settings))  # built while tracing is on
    user = await sign_up(traced)
    body = {"type": "thumbnail", "params": {"file_id": "00000000-0000-0000-0000-000000000001"}}
    response = await traced.post("/api/v1/jobs", json=body, headers=user.headers)
    assert response.status == 202
    job_id = (await response.json())["id"]
    [request] = named(spans, "POST /api/v1/jobs")

    # What the worker receives: the message on the topic's stream, trace context in its labels.
    stream = JobKeys(settings.redis_namespace).stream("default")
    redis = Redis.from_url(settings.redis_dsn)
    try:
        entries = await redis.xrange(stream)
    finally:
        await redis.aclose()
    [message] = [
        TaskiqMessage.model_validate(orjson.loads(fields[b"data"]))
        for _, fields in entries
        if orjson.loads(fields[b"data"])["task_id"] == job_id
    ]
    assert message.labels["traceparent"].split("-")[1] == format(request.context.trace_id, "032x")

    # The worker's side: the labels of the message it runs, and the job's span.
    LabelsMiddleware().pre_execute(message)
    with job_span("thumbnail", job_id, 1):
        pass
    [job] = named(spans, "thumbnail")
    assert job.kind is SpanKind.CONSUMER
    assert job.context.trace_id == request.context.trace_id
    assert job.attributes["job.id"] == job_id
