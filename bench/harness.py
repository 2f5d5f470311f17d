"""The benchmark harness: the shipped server and a bare-aiohttp ceiling, measured the same way.

Both run as `workers` processes sharing one port, against the same PostgreSQL and Redis, and
are loaded by `wrk` on loopback. Every figure is printed beside its ceiling measured in the same
run, so the ratios mean something whatever machine runs them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


@dataclass(frozen=True)
class Load:
    """One wrk run's result."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


@dataclass(frozen=True)
class Request:
    path: str
    method: str = "GET"
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    lua: str | None = None  # a wrk script, for requests that change per call


@dataclass(frozen=True)
class Row:
    name: str
    connections: int
    load: Load  # the median run of those measured
    ceiling: Load | None
    target: float | None = None  # the ratio the row should reach
    runs: tuple[Load, ...] = ()  # every run of `load`'s side, round by round
    ceiling_runs: tuple[Load, ...] = ()  # and of the ceiling's, in the same rounds

    @property
    def ratio(self) -> float | None:
        if self.runs and self.ceiling_runs:
            return paired_median(
                [load.rps for load in self.runs], [load.rps for load in self.ceiling_runs]
            )
        return None if self.ceiling is None else self.load.rps / self.ceiling.rps

    @classmethod
    def paired_runs(
        cls,
        name: str,
        connections: int,
        runs: list[Load],
        baseline: list[Load],
        target: float | None = None,
    ) -> Row:
        """`runs` against `baseline`, measured in the same rounds (`alternate`): each side's
        median run, and the median of the rounds' throughput ratios."""
        return cls(
            name,
            connections,
            median_run(runs),
            median_run(baseline),
            target,
            runs=tuple(runs),
            ceiling_runs=tuple(baseline),
        )

    def line(self) -> str:
        ceiling = (
            f"{self.ceiling.rps:>9.0f} {self.ceiling.p99_ms:>8.1f}"
            if self.ceiling
            else f"{'-':>9} {'-':>8}"
        )
        ratio = f"{self.ratio:.2f}x" if self.ratio is not None else "-"
        target = f">= {self.target:.2f}x" if self.target is not None else ""
        verdict = ""
        if self.target is not None and self.ratio is not None:
            verdict = "ok" if self.ratio >= self.target else "BELOW TARGET"
        errors = f" errors={self.load.errors}" if self.load.errors else ""
        return (
            f"{self.name:<44} {self.connections:>5} {self.load.rps:>9.0f} "
            f"{self.load.p50_ms:>7.1f} {self.load.p99_ms:>8.1f} | {ceiling} {ratio:>7} "
            f"{target:>9} {verdict}{errors}"
        )


def median_run(runs: list[Load]) -> Load:
    return sorted(runs, key=lambda load: load.rps)[len(runs) // 2]


def paired_median(values: list[float], baseline: list[float]) -> float:
    """The median of the rounds' ratios of `values` to `baseline`. On a shared machine one run
    strays by 10% from the next and the whole machine drifts by as much within a minute:
    pairing runs of the same round cancels the drift, the median shrugs off the strays."""
    return statistics.median(a / b for a, b in zip(values, baseline, strict=True))


def alternate(rounds: int, sides: Sequence[Callable[[], T]]) -> list[list[T]]:
    """Run each of `sides` once per round, forwards in even rounds and backwards in odd ones
    (so that neither always goes first); each side's results, in round order."""
    results: list[list[T]] = [[] for _ in sides]
    for round_ in range(rounds):
        order = list(zip(sides, results, strict=True))
        for side, found in order if round_ % 2 == 0 else reversed(order):
            found.append(side())
    return results


HEADER = (
    f"{'scenario':<44} {'conns':>5} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>8} | "
    f"{'ceil req/s':>9} {'ceil p99':>8} {'ratio':>7} {'target':>9}"
)


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        sys.exit("bench: wrk is not installed (Debian: apt-get install wrk; `make bench` does it)")
    return found


def run_wrk(base: str, request: Request, *, connections: int, seconds: float) -> Load:
    """Load `base + request.path` with `connections` connections for `seconds`."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(request.lua or _static_script(request))
    try:
        result = subprocess.run(
            [
                wrk_binary(),
                "-t",
                "1",
                "-c",
                str(connections),
                "-d",
                f"{max(1, round(seconds))}s",
                "--latency",
                "-s",
                script.name,
                base + request.path,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
    finally:
        os.unlink(script.name)
    return parse_wrk(result.stdout)


def _static_script(request: Request) -> str:
    lines = [f'wrk.method = "{request.method}"']
    if request.body is not None:
        lines.append(f"wrk.body = [[{request.body}]]")
    for name, value in request.headers.items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    return "\n".join(lines) + "\n" + _COUNT_ERRORS


def counting_errors(lua: str) -> str:
    """A wrk script that also counts HTTP errors, as the static ones do."""
    return lua + "\n" + _COUNT_ERRORS


# wrk counts only socket errors; count HTTP >= 400 as errors too.
_COUNT_ERRORS = """
local bad = 0
function response(status, headers, body) if status >= 400 then bad = bad + 1 end end
function done(summary, latency, requests) io.write(string.format("http_errors %d\\n", bad)) end
"""


def parse_wrk(output: str) -> Load:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", output, re.MULTILINE))
    socket_errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    http_errors = re.search(r"http_errors (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = socket_errors + int(http_errors[1] if http_errors else non_2xx[1] if non_2xx else 0)
    requests = int(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]
    return Load(rps, _ms(percentiles["50"]), _ms(percentiles["99"]), errors, requests)


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


@contextlib.contextmanager
def process(
    argv: list[str], env: dict[str, str], ready_url: str, log: Path
) -> Iterator[subprocess.Popen]:
    """Run a server process (group) until the block ends; wait for `ready_url` to answer."""
    with open(log, "wb") as output:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(ready_url, proc, log)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")
