"""Operational endpoints: liveness, readiness and the Prometheus scrape."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from actors.health import HEALTH, CheckReadiness
from config.settings import EXEMPT
from observability.exporter import scrape_response
from server.routing import PUBLIC, Routes, json_response
from server.state import ACTORS, LIFECYCLE

routes = Routes(tag="operations")


@routes.get("/livez", access=PUBLIC, rate_limit=EXEMPT)
async def livez(request: web.Request) -> dict[str, str]:
    """The process is alive and its event loop answers."""
    return {"status": "ok"}


@routes.get("/readyz", access=PUBLIC, rate_limit=EXEMPT)
async def readyz(request: web.Request) -> web.Response:
    """Whether this process should get traffic: primary and Redis reachable, not draining.

    Replicas are reported but optional: without a healthy one, reads fall back to the primary.
    """
    if request.app[LIFECYCLE].draining:
        return json_response({"status": "draining"}, status=503)
    report = await request.app[ACTORS][HEALTH].ask(CheckReadiness())
    body: dict[str, Any] = {
        "status": _status(report.ready, report.replicas),
        "checks": {
            "primary": asdict(report.primary),
            "redis": asdict(report.redis),
            "replicas": report.replicas,
        },
        "reads": report.reads_on,
    }
    return json_response(body, status=200 if report.ready else 503)


@routes.get("/metrics", access=PUBLIC, rate_limit=EXEMPT)
async def scrape(request: web.Request) -> web.Response:
    """Prometheus text exposition (summed over every API process)."""
    return scrape_response()


def _status(ready: bool, replicas: list[dict[str, Any]]) -> str:
    if not ready:
        return "unavailable"
    return "degraded" if any(not r["up"] for r in replicas) else "ready"
