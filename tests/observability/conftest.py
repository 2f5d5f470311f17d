"""Fixtures for the observability tests: the API as several real processes, a process that
only serves metrics, in-memory tracing, promtool, and scrapes read back as numbers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from config import Settings
from observability import tracing
from tests.conftest import eventually
from tests.processes import ROOT, free_port, service_env, wait_until_serving

Samples = list[tuple[str, dict[str, str], float]]


@dataclass
class Group:
    """`backend serve --workers N` running on `base`, its metrics in `metrics_dir`."""

    base: str
    port: int
    process: asyncio.subprocess.Process
    metrics_dir: Path
    livez_served: int = 0  # GET /livez answered, as counted by the tests that sent them

    async def hit_livez(self, count: int) -> None:
        """`count` GET /livez, each on a new connection, so the kernel spreads them over the
        processes."""
        connector = aiohttp.TCPConnector(force_close=True, limit=32)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> None:
                async with session.get(f"{self.base}/livez") as response:
                    assert response.status == 200
                    self.livez_served += 1

            await asyncio.gather(*(one() for _ in range(count)))

    async def scraped_livez(self) -> float:
        return total(await scrape(f"{self.base}/metrics"), "http_requests_total", route="/livez")

    def children(self) -> list[int]:
        """The pids of the API processes the supervisor runs now."""
        text = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return [int(pid) for pid in text.split()]

    def all_listening(self, count: int) -> bool:
        """Whether `count` children each hold a socket listening on the port."""
        listening = _listening_sockets(self.port)
        children = self.children()
        return len(children) == count and all(
            not listening.isdisjoint(_sockets(pid)) for pid in children
        )


def _listening_sockets(port: int) -> set[str]:
    """Inodes of the loopback TCP sockets listening on `port` (state 0A in /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
            inodes.add(fields[9])
    return inodes


def _sockets(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                found.add(target[8:-1])
    return found


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, every span kept in memory, for the test's duration."""
    exporter = InMemorySpanExporter()
    tracing.configure(exporter, service_name="backend-test")
    yield exporter
    tracing.shutdown()


def _installed(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        pytest.fail(f"{program} not found: `make test` installs it (Debian package `prometheus`)")
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    return _installed("promtool")


@pytest.fixture(scope="session")
def prometheus() -> str:
    return _installed("prometheus")


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.fixture(scope="package")
async def api_group(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Group]:
    """The API as it ships: a supervisor and two processes sharing one port."""
    state = tmp_path_factory.mktemp("api-group")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--workers",
        "2",
        "--port",
        str(port),
        cwd=ROOT,
        env=service_env(settings, STATE_DIR=str(state), DRAIN_SECONDS="0"),
    )
    base = f"http://127.0.0.1:{port}"
    group = Group(base, port, process, state / "metrics")
    try:
        await wait_until_serving(f"{base}/readyz", process)
        await eventually(lambda: _now(group.all_listening(2)), timeout=30)
        yield group
    finally:
        await stop(process)


@pytest.fixture(scope="package")
async def metrics_process(settings: Settings) -> AsyncIterator[str]:
    """A process with no API that exposes its metrics with `serve_metrics`, as the Taskiq
    workers and the scheduler do: its `host:port`."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.observability.metrics_process",
        str(port),
        cwd=ROOT,
        env=service_env(settings),
    )

    async def serving() -> bool:
        assert process.returncode is None, "the metrics process exited"
        try:
            await scrape(f"http://127.0.0.1:{port}/metrics")
        except aiohttp.ClientConnectionError:
            return False
        return True

    try:
        await eventually(serving, timeout=30)
        yield f"127.0.0.1:{port}"
    finally:
        await stop(process)


async def _now(value: bool) -> bool:
    return value


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the `name` samples whose labels include `labels`."""
    return sum(
        value
        for sample, found, value in samples
        if sample == name and all(found.get(k) == v for k, v in labels.items())
    )


def counts_by_process(metrics_dir: Path, name: str, **labels: str) -> dict[int, float]:
    """`name`'s value in each process's own file of the multiprocess directory."""
    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[-1])
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, sample, found, _ = json.loads(key)
            if sample == name and all(found.get(k) == v for k, v in labels.items()):
                counts[pid] = counts.get(pid, 0) + value
    return counts
