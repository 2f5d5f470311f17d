"""Rows for the rate limiter: a cheap route with and without it, in the same run.

The limited server charges `/livez` to a policy too large to refuse anything, so every request
pays the limiter's full cost; Redis's own command counters show how many round trips that is.
"""

from __future__ import annotations

import json

import redis

from bench.harness import Request, Row
from bench.run import Bench

UNLIMITED_POLICY = json.dumps({"default": {"capacity": 10**9, "per_second": 10**9}})


def rows(bench: Bench) -> list[Row]:
    counters = redis.Redis.from_url(bench.settings.redis_dsn)
    found = []
    with (
        bench.variant(
            RATE_LIMIT_ROUTES='{"livez": "default"}', RATE_LIMIT_POLICIES=UNLIMITED_POLICY
        ) as limited,
        bench.variant(RATE_LIMIT_ENABLED="false") as unlimited,
    ):
        for connections in bench.connections:
            before = _script_calls(counters)
            row = bench.measure(
                "limiter on vs off: GET /livez",
                Request("/livez"),
                ceiling=Request("/livez"),
                connections=connections,
                server=limited,
                ceiling_server=unlimited,
            )
            requests = sum(load.requests for load in row.runs)
            calls = (_script_calls(counters) - before) / max(1, requests)
            print(f"{'':<44} Redis calls per limited request: {calls:.2f} (target <= 1)")
            found.append(row)
    counters.close()
    return found


def _script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))
