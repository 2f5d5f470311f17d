"""A stand-in OpenTelemetry collector for the benchmarks: takes OTLP/HTTP trace exports,
counts their spans, answers success.

    python -m bench.otlp_sink --port 4318      GET /spans -> {"spans": N}
"""

from __future__ import annotations

import argparse

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

SPANS = web.AppKey("spans", list[int])
_ACCEPTED = ExportTraceServiceResponse().SerializeToString()


async def export(request: web.Request) -> web.Response:
    batch = ExportTraceServiceRequest.FromString(await request.read())
    request.app[SPANS][0] += sum(
        len(scope.spans) for resource in batch.resource_spans for scope in resource.scope_spans
    )
    return web.Response(body=_ACCEPTED, content_type="application/x-protobuf")


async def count(request: web.Request) -> web.Response:
    return web.json_response({"spans": request.app[SPANS][0]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    app = web.Application(client_max_size=64 << 20)
    app[SPANS] = [0]
    app.router.add_post("/v1/traces", export)
    app.router.add_get("/spans", count)
    web.run_app(app, host="127.0.0.1", port=parser.parse_args().port, access_log=None, print=None)


if __name__ == "__main__":
    main()
