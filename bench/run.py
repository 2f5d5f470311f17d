"""Orchestration: services, the shipped server and the ceiling, then every suite's rows."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bench.harness import (
    HEADER,
    ROOT,
    Load,
    Request,
    Row,
    alternate,
    median_run,
    process,
    run_wrk,
)
from config import Settings, load_settings
from server.cli import embedded_needs, resolve
from storage.embedded import EmbeddedServices
from storage.migrations import migrate
from tests.processes import free_port


@dataclass
class Bench:
    server: str
    ceiling: str
    settings: Settings
    seconds: float
    connections: tuple[int, ...]

    workers: int = 1
    rounds: int = 3

    def measure(
        self,
        name: str,
        request: Request,
        *,
        ceiling: Request | None,
        connections: int,
        target: float | None = None,
        server: str | None = None,
        ceiling_server: str | None = None,
    ) -> Row:
        """Load `request` on the shipped server (or `server`) and `ceiling` on the bare
        ceiling app (or `ceiling_server`) in `rounds` rounds, taking turns at going first, and
        print the row (see `Row.paired_runs`)."""

        def run(base: str, wanted: Request) -> Callable[[], Load]:
            return lambda: run_wrk(base, wanted, connections=connections, seconds=self.seconds)

        sides = [run(server or self.server, request)]
        if ceiling is not None:
            sides.append(run(ceiling_server or self.ceiling, ceiling))
        runs = alternate(self.rounds, sides)
        if ceiling is None:
            row = Row(name, connections, median_run(runs[0]), None, target, runs=tuple(runs[0]))
        else:
            row = Row.paired_runs(name, connections, runs[0], runs[1], target)
        print(row.line(), flush=True)
        return row

    @contextlib.contextmanager
    def variant(self, **env: str) -> Iterator[str]:
        """Another `backend serve` like the shipped one but for `env`; yields its base URL."""
        port = free_port()
        log = self.settings.state_dir / f"variant-{port}.log"
        # Its own metrics directory: the shipped server's would be wiped, and summed with it.
        with tempfile.TemporaryDirectory(prefix="metrics-", dir=self.settings.state_dir) as tmp:
            environ = {
                **environment(self.settings, port, self.workers),
                "PROMETHEUS_MULTIPROC_DIR": tmp,
                **env,
            }
            with process(
                [sys.executable, "-m", "server.cli", "serve"],
                environ,
                f"http://127.0.0.1:{port}/readyz",
                log,
            ):
                yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def bench_services(state: str) -> Iterator[Settings]:
    """This run's settings: the configured services, or embedded ones of the bench's own,
    migrated (the servers' actors need the schema)."""
    settings = load_settings(state_dir=ROOT / ".run" / state, access_log=True)
    needed = embedded_needs(settings)
    embedded = EmbeddedServices(settings.state_dir)
    if needed:
        embedded.start(needed)
    try:
        resolved = resolve(settings)
        asyncio.run(migrate(resolved.primary_dsn))  # the shipped server needs its schema
        yield resolved
    finally:
        if needed:
            embedded.stop(needed)


def environment(settings: Settings, port: int, workers: int) -> dict[str, str]:
    return {
        **os.environ,
        "PORT": str(port),
        "WORKERS": str(workers),
        "STATE_DIR": str(settings.state_dir),
        "DATABASE_URL": settings.primary_dsn,
        "DATABASE_REPLICA_URLS": ",".join(settings.replica_dsns),
        "REDIS_URL": settings.redis_dsn,
        "LOG_LEVEL": "WARNING",
    }


@contextlib.contextmanager
def servers(settings: Settings, workers: int) -> Iterator[tuple[str, str]]:
    """The shipped server (`backend serve`) and the ceiling, each on `workers` processes."""
    server_port, ceiling_port = free_port(), free_port()
    env = environment(settings, server_port, workers)
    logs = settings.state_dir
    with (
        process(
            [sys.executable, "-m", "server.cli", "serve"],
            env,
            f"http://127.0.0.1:{server_port}/readyz",
            logs / "server.log",
        ),
        process(
            [
                sys.executable,
                "-m",
                "bench.ceiling",
                "--port",
                str(ceiling_port),
                "--workers",
                str(workers),
            ],
            env,
            f"http://127.0.0.1:{ceiling_port}/noop",
            logs / "ceiling.log",
        ),
    ):
        yield f"http://127.0.0.1:{server_port}", f"http://127.0.0.1:{ceiling_port}"


def print_header(workers: int, seconds: float, rounds: int) -> None:
    print(
        f"{workers} server processes each side; {rounds} rounds of {seconds:g}s per side and "
        "row, medians; wrk on loopback"
    )
    print(HEADER)
    print("-" * len(HEADER))


def summary(rows: list[Row]) -> int:
    below = [row for row in rows if row.target and row.ratio is not None and row.ratio < row.target]
    print(f"\n{len(rows)} rows, {len(below)} below target")
    return 1 if below else 0
