"""Rows for observability: what metrics and tracing cost, off against on, on the hot route
(the catalog's cached product read).

Four `backend serve` groups, started together, each with the shipped process count: metrics
off; as shipped (metrics on, tracing off); tracing at 10% to an OTLP collector (a local sink);
tracing at 100%. Nine short rounds go through them forwards, then backwards, and each figure
is the median over the rounds of a group's ratio to its baseline in the same round (see
`Row.paired_runs`; finer than the other suites' three rounds, for a 5% target). Rows: metrics
on against off (target: under 5% cost), tracing at 10% against metrics on, tracing's baseline
(target: under 10%). Server CPU per request is printed too: it holds up better than
throughput when other work shares the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench import commerce
from bench.harness import Load, Request, Row, alternate, paired_median, process, run_wrk
from bench.run import Bench
from tests.processes import free_port

ROUNDS = 9
ROUND_SECONDS = 3


def hot_route(bench: Bench) -> tuple[str, Request]:
    """The route measured: the catalog's cached product read (it was `"GET /livez",
    Request("/livez")` before the catalog existed)."""
    return "GET /products/{id}", commerce.cached_product_reads(bench)


def rows(bench: Bench) -> list[Row]:
    route, request = hot_route(bench)
    connections = bench.connections[0]
    sink_port = free_port()
    sink = f"http://127.0.0.1:{sink_port}"
    # Every group as shipped but for a rate-limit policy that admits everything (the
    # limiter's cost is the rate limiter's row).
    shipped = {"RATE_LIMIT_POLICIES": commerce.UNLIMITED_POLICY}
    traced = {**shipped, "TRACING_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": sink}
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
            "off": stack.enter_context(bench.variant(**shipped, METRICS_ENABLED="false")),
            "metrics": stack.enter_context(bench.variant(**shipped)),
            "10%": stack.enter_context(bench.variant(**traced, TRACING_SAMPLE_RATIO="0.1")),
            "100%": stack.enter_context(bench.variant(**traced, TRACING_SAMPLE_RATIO="1")),
        }

        def measured(base: str) -> Callable[[], tuple[Load, float]]:
            def run() -> tuple[Load, float]:
                before = server_cpu(base)
                load = run_wrk(base, request, connections=connections, seconds=ROUND_SECONDS)
                return load, (server_cpu(base) - before) / max(1, load.requests)

            return run

        results = alternate(ROUNDS, [measured(base) for base in servers.values()])
        measurements = dict(zip(servers, results, strict=True))
        loads = {name: [load for load, _ in runs] for name, runs in measurements.items()}
        cpu = {name: [used for _, used in runs] for name, runs in measurements.items()}
        exported = json.load(urllib.request.urlopen(f"{sink}/spans", timeout=5))["spans"]

    def row(name: str, group: str, baseline: str, target: float | None = None) -> Row:
        return Row.paired_runs(
            f"{name}: {route}", connections, loads[group], loads[baseline], target
        )

    found = [
        row("metrics on vs off", "metrics", "off", 0.95),
        row("tracing 10% vs off", "10%", "metrics", 0.90),
        row("tracing 100% vs off", "100%", "metrics"),
    ]
    for each in found:
        print(each.line(), flush=True)
    per_request = {name: statistics.median(values) * 1e6 for name, values in cpu.items()}

    def cost(group: str, baseline: str) -> str:
        return f"{paired_median(cpu[group], cpu[baseline]) - 1:+.1%}"

    print(
        f"{'':<44} server CPU per request (median round): "
        + ", ".join(f"{name} {us:.0f} us" for name, us in per_request.items()),
        flush=True,
    )
    print(
        f"{'':<44} cost: metrics {cost('metrics', 'off')} (target < 5%), "
        f"tracing 10% {cost('10%', 'metrics')} (target < 10%), "
        f"tracing 100% {cost('100%', 'metrics')}",
        flush=True,
    )
    print(f"{'':<44} spans received by the OTLP collector: {exported}", flush=True)
    return found


def server_cpu(base: str) -> float:
    """CPU seconds used so far by the processes listening on `base`'s port."""
    port = int(base.rsplit(":", 1)[1])
    listening = {
        fields[9]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if (fields := line.split())[3] == "0A" and int(fields[1].split(":")[1], 16) == port
    }
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and listening & _sockets(entry):
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _sockets(process: Path) -> set[str]:
    found = set()
    with contextlib.suppress(OSError):
        for fd in (process / "fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    found.add(target[8:-1])
    return found
