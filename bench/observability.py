"""Rows for observability: what metrics and tracing cost on a hot route, off against on.

Four `backend serve` groups, each with the shipped process count: metrics off; as shipped
(metrics on, tracing off); tracing at 10% to an OTLP collector (a local sink); tracing at 100%.
The rounds alternate between them so that drift on a shared machine hits all alike, and each
row compares the best round of each: metrics on against off (target: under 5% cost), and
tracing at 10% against off (target: under 10%).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import urllib.request

from bench.harness import Load, Request, Row, process, run_wrk
from bench.run import Bench
from tests.processes import free_port

ROUNDS = 2


def hot_route(bench: Bench) -> Request:
    """The route measured. The catalog's cached product read replaces `/livez` when it lands."""
    return Request("/livez")


def rows(bench: Bench) -> list[Row]:
    request = hot_route(bench)
    connections = bench.connections[0]
    sink_port = free_port()
    sink = f"http://127.0.0.1:{sink_port}"
    traced = {
        "TRACING_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink,
    }
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            process(
                [sys.executable, "-m", "bench.otlp_sink", "--port", str(sink_port)],
                dict(os.environ),
                f"{sink}/spans",
                bench.settings.state_dir / "otlp-sink.log",
            )
        )
        servers = {
            "off": stack.enter_context(bench.variant(METRICS_ENABLED="false")),
            "metrics": bench.server,
            "10%": stack.enter_context(bench.variant(**traced, TRACING_SAMPLE_RATIO="0.1")),
            "100%": stack.enter_context(bench.variant(**traced, TRACING_SAMPLE_RATIO="1")),
        }
        best: dict[str, Load] = {}
        for _ in range(ROUNDS):
            for name, base in servers.items():
                load = run_wrk(base, request, connections=connections, seconds=bench.seconds)
                if name not in best or load.rps > best[name].rps:
                    best[name] = load
        exported = json.load(urllib.request.urlopen(f"{sink}/spans", timeout=5))["spans"]
    path = request.path
    found = [
        Row(f"metrics on vs off: GET {path}", connections, best["metrics"], best["off"], 0.95),
        Row(f"tracing 10% vs off: GET {path}", connections, best["10%"], best["metrics"], 0.90),
        Row(f"tracing 100% vs off: GET {path}", connections, best["100%"], best["metrics"]),
    ]
    for row in found:
        print(row.line(), flush=True)
    print(f"{'':<44} spans received by the OTLP collector: {exported}", flush=True)
    return found
