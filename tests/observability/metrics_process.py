"""A process without the API that serves its metrics on a port of its own, as the Taskiq
workers and the scheduler do: `python -m tests.observability.metrics_process PORT`."""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop

from config import load_settings
from observability.exporter import serve_metrics
from observability.instrumentation import instrumented
from observability.logging import configure_logging


async def main(port: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with serve_metrics(port):
        await stop.wait()


if __name__ == "__main__":
    settings = load_settings()
    configure_logging(settings.log_level)
    with instrumented(settings, service="backend-worker"):
        uvloop.run(main(int(sys.argv[1])))
