"""Running the server: one process on uvloop, or a supervisor of several sharing the port.

Shutdown, on SIGTERM or SIGINT: `/readyz` turns 503 at once; for `DRAIN_SECONDS` the process
still takes connections, so load balancers see it leave; then the listening socket closes, idle
keep-alive connections close, WebSockets are closed with 1001 (`on_shutdown`), in-flight
requests get up to `SHUTDOWN_TIMEOUT` to finish, and finally actors drain and pools close.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvloop
from aiohttp import web

from config import Settings
from observability import metrics
from observability.instrumentation import instrumented
from server.app import create_app
from server.state import LIFECYCLE

log = logging.getLogger("backend.server")

AppFactory = Callable[[Settings], Awaitable[web.Application]]


async def run_server(settings: Settings, app_factory: AppFactory = create_app) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully."""
    with instrumented(settings):
        await _serve(settings, await app_factory(settings))


async def _serve(settings: Settings, app: web.Application) -> None:
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=settings.shutdown_timeout
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=True, backlog=2048)
        await site.start()
        # What start-up made (modules, routes, pools, actors) lives as long as the process:
        # out of the collector's reach, full collections stop walking it on every request
        # that allocates (a recorded span allocates many objects).
        gc.collect()
        gc.freeze()
        log.info(
            "serving", extra={"host": settings.host, "port": settings.port, "pid": os.getpid()}
        )
        await _signalled()
        app[LIFECYCLE].draining = True
        log.info("draining", extra={"seconds": settings.drain_seconds})
        await asyncio.sleep(settings.drain_seconds)
    finally:
        await runner.cleanup()
        log.info("stopped", extra={"pid": os.getpid()})


async def _signalled() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def serve(settings: Settings, workers: int) -> int:
    """Serve with `workers` processes: in this process for one, else under a supervisor."""
    if workers == 1:
        uvloop.run(run_server(settings))
        return 0
    # The children get the address this process was given, command-line overrides included.
    argv = [sys.executable, "-m", "server.cli", "serve", "--workers", "1"]
    argv += ["--host", settings.host, "--port", str(settings.port)]
    children = [Child(f"api-{i}", argv) for i in range(workers)]
    return Supervisor(children, settings).run()


def serve_everything(settings: Settings, workers: int) -> int:
    """`backend up`: the API on `workers` processes, a worker for every topic, the scheduler.

    Workers and the scheduler report on their own metrics ports, so they stay out of the API's
    summed scrape (no double counting when Prometheus scrapes all of them)."""
    command = [sys.executable, "-m", "server.cli"]
    own_metrics = {"PROMETHEUS_MULTIPROC_DIR": None}
    children = [Child(f"api-{i}", [*command, "serve", "--workers", "1"]) for i in range(workers)]
    children += [
        Child("worker", [*command, "worker"], own_metrics),
        Child("scheduler", [*command, "scheduler"], own_metrics),
    ]
    return Supervisor(children, settings).run()


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str | None] = field(default_factory=dict)  # None: leave the variable unset
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_failures: int = 0


@dataclass
class Supervisor:
    """Runs child processes, restarts one that dies, stops them all on SIGTERM/SIGINT.

    A child that keeps dying within seconds of its start (a port in use, bad configuration)
    stops the whole group instead of restarting forever.
    """

    children: list[Child]
    settings: Settings
    max_quick_failures: int = 3
    _stopping: bool = field(default=False, init=False)
    _metrics_dir: str = field(default="", init=False)

    def run(self) -> int:
        env = self._environment()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        for child in self.children:
            self._spawn(child, env)
        code = 0
        while not self._stopping:
            time.sleep(0.2)
            for child in self.children:
                if self._stopping or child.process is None or child.process.poll() is None:
                    continue
                if not self._should_restart(child):
                    code = 1
                    self._stopping = True
                    break
                self._spawn(child, env)
        self._terminate_all()
        return code

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if "PROMETHEUS_MULTIPROC_DIR" not in env:
            directory = Path(self.settings.state_dir).resolve() / "metrics"
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        self._metrics_dir = env["PROMETHEUS_MULTIPROC_DIR"]
        return env

    def _spawn(self, child: Child, env: dict[str, str]) -> None:
        merged = {key: value for key, value in {**env, **child.env}.items() if value is not None}
        child.process = subprocess.Popen(child.argv, env=merged)  # noqa: S603 - our own program
        child.started = time.monotonic()
        log.info("child started", extra={"child": child.name, "pid": child.process.pid})

    def _should_restart(self, child: Child) -> bool:
        assert child.process is not None
        code = child.process.returncode
        metrics.mark_process_dead(child.process.pid, self._metrics_dir)
        quick = time.monotonic() - child.started < 5.0
        child.quick_failures = child.quick_failures + 1 if quick else 0
        log.error("child exited", extra={"child": child.name, "code": code})
        if child.quick_failures >= self.max_quick_failures:
            log.error("child keeps failing at start; stopping", extra={"child": child.name})
            return False
        return True

    def _terminate_all(self) -> None:
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = (
            time.monotonic() + self.settings.drain_seconds + self.settings.shutdown_timeout + 5
        )
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("child did not stop in time; killing", extra={"pid": process.pid})
                process.kill()
                process.wait()
        for child in self.children:
            if child.process is not None:
                metrics.mark_process_dead(child.process.pid, self._metrics_dir)
