"""The Prometheus scrape endpoint: in the API app (`GET /metrics`), and on a port of its own for
processes that serve no HTTP (the Taskiq workers and the scheduler).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from observability import metrics

log = logging.getLogger("backend.metrics")


def scrape_response() -> web.Response:
    """This process's metrics, or the sum over every process sharing its
    `PROMETHEUS_MULTIPROC_DIR`, in the Prometheus text format."""
    body, content_type = metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def _scrape(request: web.Request) -> web.Response:
    return scrape_response()


async def sampled(app: web.Application) -> AsyncIterator[None]:
    """An app's `cleanup_ctx` entry that keeps the process gauges current while it runs."""
    async with metrics.sampling():
        yield


class MetricsServer:
    """`GET /metrics` on `host:port`, and the process gauges (memory, CPU, descriptors, pools)
    kept current, for a process that has no API app: `await start()` at the process's start,
    `await stop()` at its end (Taskiq's `WORKER_STARTUP` and `WORKER_SHUTDOWN` events), or
    `async with serve_metrics(port):` around its life.

    Several processes of one kind (a worker with `--workers N`) may share one port (it is
    bound with SO_REUSEPORT) when they share a `PROMETHEUS_MULTIPROC_DIR` of their own, not the
    API's: any of them then answers a scrape with the sum over all of them. Whoever restarts a
    dead one should call `metrics.mark_process_dead(pid, directory)`; a clean exit does it
    itself.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        app = web.Application()
        app.router.add_get("/metrics", _scrape)
        app.cleanup_ctx.append(sampled)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_port=True)
        await site.start()
        log.info("metrics served", extra={"host": self.host, "port": self.port})

    async def stop(self) -> None:
        await self._runner.cleanup()


@asynccontextmanager
async def serve_metrics(port: int, host: str = "127.0.0.1") -> AsyncIterator[MetricsServer]:
    """This process's metrics on `host:port` while the block runs: see `MetricsServer`.

    async with serve_metrics(settings.worker_metrics_port, host=settings.host):
        ...  # the worker runs
    """
    server = MetricsServer(port, host)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
