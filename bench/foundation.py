"""Rows for the foundation: what the middleware stack costs on the cheapest route."""

from __future__ import annotations

from bench.harness import Request, Row
from bench.run import Bench


def rows(bench: Bench) -> list[Row]:
    return [
        bench.measure(
            "GET /livez (full middleware) vs bare handler",
            Request("/livez"),
            ceiling=Request("/noop"),
            connections=connections,
        )
        for connections in bench.connections
    ]
