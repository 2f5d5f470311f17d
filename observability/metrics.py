"""Prometheus metrics.

Every metric is a module-level prometheus-client object, so that with several API processes
(`PROMETHEUS_MULTIPROC_DIR` set by `backend serve --workers N`) one scrape reports their sum.
Labels are bounded: route templates, actor names, replica names, never raw input.

Hot paths hold metric children bound once (`child`): they add up in plain Python and are
written to prometheus-client once a second (`flush`), and they are no-ops when metrics are
switched off (`configure(enabled=False)`, only done to measure what metrics cost).
Gauges that describe a state rather than an event (process memory, pool sizes) are sampled
every `SAMPLE_INTERVAL` seconds in each process by `sampling()`, and again at each scrape.
"""

from __future__ import annotations

import asyncio
import atexit
import os
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector


class _Flusher(Collector):
    """Registered before every metric below, so that whoever reads the registry in this
    process (a scrape, `REGISTRY.get_sample_value` in a test) sees the batched updates
    (`child`) written first."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        flush()
        return []


REGISTRY.register(_Flusher())

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered.", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from request start to response, by route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "http_requests_in_flight", "Requests being handled now.", multiprocess_mode="livesum"
)

ACTOR_MAILBOX = Gauge(
    "actor_mailbox_depth",
    "Messages waiting in the mailbox.",
    ["actor"],
    multiprocess_mode="livesum",
)
ACTOR_IN_PROGRESS = Gauge(
    "actor_in_progress", "Messages being handled now.", ["actor"], multiprocess_mode="livesum"
)
ACTOR_MESSAGES = Counter(
    "actor_messages_total",
    "Messages by outcome: processed, failed (crash), rejected (mailbox full), expired (deadline).",
    ["actor", "outcome"],
)
ACTOR_RESTARTS = Counter("actor_restarts_total", "Actor restarts after a crash.", ["actor"])
ACTOR_DURATION = Histogram(
    "actor_message_duration_seconds",
    "Time spent handling one message.",
    ["actor"],
    buckets=LATENCY_BUCKETS,
)

DB_READS = Counter(
    "db_reads_total",
    "Stale-tolerant reads by where they ran: replica, or primary (no healthy replica).",
    ["target"],
)
DB_REPLICA_UP = Gauge(
    "db_replica_up",
    "1 when the replica is reachable and within the lag limit.",
    ["replica"],
    multiprocess_mode="livemin",
)
DB_REPLICA_LAG = Gauge(
    "db_replica_lag_seconds",
    "Replica replay lag behind the primary.",
    ["replica"],
    multiprocess_mode="livemax",
)
DB_REPLICA_LAG_BYTES = Gauge(
    "db_replica_lag_bytes",
    "WAL bytes the replica has yet to replay.",
    ["replica"],
    multiprocess_mode="livemax",
)


# -- background jobs and WebSockets (issue 5) ------------------------------------------------

JOB_LABELS = ["type", "topic"]
JOBS_ENQUEUED = Counter("jobs_enqueued_total", "Jobs accepted for running.", JOB_LABELS)
JOBS_STARTED = Counter("jobs_started_total", "Job attempts started by a worker.", JOB_LABELS)
JOBS_SUCCEEDED = Counter("jobs_succeeded_total", "Jobs that completed.", JOB_LABELS)
JOBS_FAILED = Counter(
    "jobs_failed_total", "Job attempts that raised (retried or not), by type.", JOB_LABELS
)
JOBS_RETRIED = Counter("jobs_retried_total", "Failed attempts scheduled again.", JOB_LABELS)
JOBS_DEAD = Counter("jobs_dead_total", "Jobs dead-lettered: attempts used up.", JOB_LABELS)
JOBS_CANCELLED = Counter("jobs_cancelled_total", "Jobs cancelled.", JOB_LABELS)
JOBS_RETURNED = Counter(
    "jobs_returned_total", "Runs handed back to the queue by a stopping worker.", JOB_LABELS
)
JOBS_RECLAIMED = Counter(
    "jobs_reclaimed_total", "Deliveries taken over from a lost worker.", ["topic"]
)
JOB_DURATION = Histogram(
    "job_run_duration_seconds",
    "Time one attempt of a job ran.",
    JOB_LABELS,
    buckets=(0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0),
)
JOBS_RUNNING = Gauge("jobs_running", "Jobs running now.", ["topic"], multiprocess_mode="livesum")
JOB_QUEUE_DEPTH = Gauge(
    "job_queue_depth", "Jobs waiting to start.", ["topic"], multiprocess_mode="livemax"
)
JOB_QUEUE_OLDEST = Gauge(
    "job_queue_oldest_age_seconds",
    "How long the oldest waiting job has waited.",
    ["topic"],
    multiprocess_mode="livemax",
)
JOB_EVENTS_PUBLISHED = Counter(
    "job_events_published_total", "Job events announced to the API processes."
)


class JobMetrics:
    """The metric children of one job type on one topic, bound once (batched, see `child`)."""

    __slots__ = (
        "cancelled",
        "dead",
        "duration",
        "enqueued",
        "failed",
        "retried",
        "returned",
        "running",
        "started",
        "succeeded",
    )

    def __init__(self, job_type: str, topic: str) -> None:
        self.enqueued = child(JOBS_ENQUEUED, job_type, topic)
        self.started = child(JOBS_STARTED, job_type, topic)
        self.succeeded = child(JOBS_SUCCEEDED, job_type, topic)
        self.failed = child(JOBS_FAILED, job_type, topic)
        self.retried = child(JOBS_RETRIED, job_type, topic)
        self.dead = child(JOBS_DEAD, job_type, topic)
        self.cancelled = child(JOBS_CANCELLED, job_type, topic)
        self.returned = child(JOBS_RETURNED, job_type, topic)
        self.duration = child(JOB_DURATION, job_type, topic)
        self.running = child(JOBS_RUNNING, topic)


def job_metrics(job_type: str, topic: str) -> JobMetrics:
    """Bound per call: `child` remembers them, and when metrics are off they are `NULL`."""
    return JobMetrics(job_type, topic)


WS_CONNECTIONS = Gauge(
    "websocket_connections", "Open WebSocket connections.", multiprocess_mode="livesum"
)
WS_MESSAGES_SENT = Counter("websocket_messages_sent_total", "Messages sent to WebSocket clients.")
WS_MESSAGES_RECEIVED = Counter(
    "websocket_messages_received_total", "Messages received from WebSocket clients."
)
WS_CLOSED = Counter(
    "websocket_closed_total",
    "WebSocket connections closed by the server, by reason.",
    ["reason"],
)
# -- process (issue 7) --------------------------------------------------------------------
# prometheus-client's own process collector reads /proc of the scraping process only, so in
# multiprocess mode it would report one process out of N. These gauges replace it (in both
# modes, so a name means the same with one process or many): written by every process
# (`sampling`), aggregated by the mode that makes sense for each.
REGISTRY.unregister(PROCESS_COLLECTOR)

PROCESS_RESIDENT_MEMORY = Gauge(
    "process_resident_memory_bytes",
    "Resident memory, summed over the live processes behind this target.",
    multiprocess_mode="livesum",
)
PROCESS_LARGEST_RESIDENT_MEMORY = Gauge(
    "process_largest_resident_memory_bytes",
    "Resident memory of the largest live process behind this target.",
    multiprocess_mode="livemax",
)
PROCESS_VIRTUAL_MEMORY = Gauge(
    "process_virtual_memory_bytes",
    "Virtual memory, summed over the live processes.",
    multiprocess_mode="livesum",
)
PROCESS_OPEN_FDS = Gauge(
    "process_open_fds",
    "Open file descriptors, summed over the live processes.",
    multiprocess_mode="livesum",
)
PROCESS_MAX_FDS = Gauge(
    "process_max_fds",
    "Open-file limit of a process (the highest among the live processes).",
    multiprocess_mode="livemax",
)
PROCESS_START_TIME = Gauge(
    "process_start_time_seconds",
    "Unix time the most recently (re)started live process started.",
    multiprocess_mode="livemax",
)
PROCESS_CPU = Counter(
    "process_cpu_seconds", "User and system CPU time, summed over every process, past and present."
)
PROCESSES = Gauge(
    "backend_processes", "Live processes behind this target.", multiprocess_mode="livesum"
)

# -- PostgreSQL pools (issue 7) -----------------------------------------------------------
# `pool` is the actor (or component) that owns it, `target` is `primary` or `replicaN`.

POOL_WAIT_BUCKETS = (0.0001, 0.0005, *LATENCY_BUCKETS[:-2])  # 100 us to 2.5 s

DB_POOL_CONNECTIONS = Gauge(
    "db_pool_connections",
    "Open pool connections by state: idle, or in_use (lent to a caller).",
    ["pool", "target", "state"],
    multiprocess_mode="livesum",
)
DB_POOL_MAX_CONNECTIONS = Gauge(
    "db_pool_max_connections",
    "Connections the pool may open.",
    ["pool", "target"],
    multiprocess_mode="livesum",
)
DB_POOL_WAIT = Histogram(
    "db_pool_wait_seconds",
    "Time a caller waited for a connection from the pool (connecting included).",
    ["pool", "target"],
    buckets=POOL_WAIT_BUCKETS,
)


# -- children bound once, written in batches, or switched off ---------------------------------
# A prometheus-client update is a locked write to a memory-mapped file in multiprocess mode
# (about 1 us, two for a histogram), and a request makes several. The children `child` hands
# out collect updates in plain Python instead, and `flush` (every `FLUSH_INTERVAL`, at each
# scrape, at exit) writes the totals: a scrape sees other processes' last second later, and a
# process killed with SIGKILL loses its last second of counts.

FLUSH_INTERVAL = 1.0


class _BatchedCounter:
    __slots__ = ("_child", "_pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._pending = 0.0

    def inc(self, amount: float = 1) -> None:
        self._pending += amount

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0.0
            self._child.inc(pending)


class _BatchedGauge:
    __slots__ = ("_child", "_published", "_value")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._value = 0.0
        self._published: float | None = None

    def inc(self, amount: float = 1) -> None:
        self._value += amount

    def dec(self, amount: float = 1) -> None:
        self._value -= amount

    def set(self, value: float) -> None:
        self._value = value

    def flush(self) -> None:
        if self._value != self._published:
            self._published = self._value
            self._child.set(self._value)


class _BatchedHistogram:
    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds = list(child._upper_bounds)  # ends with +Inf
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        self._sum += amount
        self._counts[bisect_left(self._bounds, amount)] += 1

    def flush(self) -> None:
        if not any(self._counts):
            return
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        # What `Histogram.observe` does per observation (one bucket each, plus the sum), once
        # per batch: prometheus-client has no public call for adding many observations.
        self._child._sum.inc(total)
        for bucket, count in zip(self._child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


class _Null:
    """A metric child that records nothing: what `child` hands out when metrics are off."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


NULL: Any = _Null()
_enabled = True
_batched: dict[tuple[int, tuple[str, ...]], Any] = {}


def configure(*, enabled: bool) -> None:
    """Record metrics in this process, or not. Call before the app and its actors are built."""
    global _enabled
    flush()
    _enabled = enabled
    _http_children.clear()
    _ratelimit_children.clear()


def enabled() -> bool:
    return _enabled


def child(metric: Any, *labels: str) -> Any:
    """The child of `metric` for `labels` (the metric itself when unlabelled), batched; `NULL`
    when metrics are off. Bind it once, outside the hot path."""
    if not _enabled:
        return NULL
    key = (id(metric), labels)
    found = _batched.get(key)
    if found is None:
        target = metric.labels(*labels) if labels else metric
        kind = {Counter: _BatchedCounter, Gauge: _BatchedGauge, Histogram: _BatchedHistogram}
        found = _batched[key] = kind[type(metric)](target)
    return found


def flush() -> None:
    """Write this process's batched updates to prometheus-client."""
    for batched in _batched.values():
        batched.flush()


# -- accounts, catalog and orders (issue 3) --------------------------------------------------

PASSWORD_HASHING = Histogram(
    "password_hash_seconds",
    "Argon2id work by operation (hash, verify), including the wait for a hashing thread.",
    ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
AUTH_EVENTS = Counter(
    "auth_events_total",
    "Authentication outcomes: login, login_failed, refresh, refresh_reuse, logout, rejected.",
    ["event"],
)
CACHE_LOOKUPS = Counter(
    "cache_lookups_total",
    "Catalog cache lookups by layer (near: in-process, redis) and result (hit, miss).",
    ["cache", "result"],
)
CACHE_LOADS = Counter(
    "cache_loads_total",
    "Database reads made to fill the catalog cache, by kind (item, listing).",
    ["kind"],
)
CACHE_INVALIDATIONS = Counter(
    "cache_invalidations_total", "Catalog changes applied to this process's near cache."
)
CACHE_FILLS_SKIPPED = Counter(
    "cache_fills_skipped_total",
    "Cache fills not kept because the data changed while they were being read.",
)
ORDERS = Counter(
    "orders_total",
    "Order requests by outcome: placed, replayed, out_of_stock, cancelled, transition.",
    ["outcome"],
)
READS_AFTER_WRITE = Counter(
    "reads_after_write_total",
    "Reads that had to see the caller's own recent write (a read floor), by where they ran.",
    ["target"],
)

# -- files (uploads and the file store) --------------------------------------------------------

FILES_STORED = Counter("files_stored_total", "Files stored by upload.", ["content_type"])
FILES_STORED_BYTES = Counter(
    "files_stored_bytes_total", "Bytes of files stored by upload.", ["content_type"]
)
FILES_DELETED = Counter("files_deleted_total", "Files deleted.")
FILES_DELETED_BYTES = Counter("files_deleted_bytes_total", "Bytes of files deleted.")
FILES_UPLOAD_DURATION = Histogram(
    "files_upload_duration_seconds",
    "Time from the first byte of an upload to its stored record, for stored uploads.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
)
FILES_UPLOAD_REJECTS = Counter(
    "files_upload_rejects_total",
    "Uploads refused or lost, by reason: too_large, unsupported_type, invalid, client_gone, "
    "busy, timeout, storage_error, error.",
    ["reason"],
)
FILES_UPLOADS_IN_PROGRESS = Gauge(
    "files_uploads_in_progress", "Uploads being received now.", multiprocess_mode="livesum"
)
FILES_SERVED_BYTES = Counter("files_served_bytes_total", "Bytes of files sent to clients.")
FILES_MISSING_OBJECTS = Counter(
    "files_missing_objects_total",
    "Files whose record exists but whose object is missing from the store (answered 404).",
)

_http_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def http_request(method: str, route: str, status: str) -> tuple[Any, Any]:
    """The request counter and duration histogram children for one label set, made once."""
    children = _http_children.get((method, route, status))
    if children is None:
        children = _http_children[(method, route, status)] = (
            child(HTTP_REQUESTS, method, route, status),
            child(HTTP_DURATION, method, route),
        )
    return children


# -- rate limiter ---------------------------------------------------------------------------

RATELIMIT_DECISIONS = Counter(
    "ratelimit_decisions_total",
    "Rate-limit decisions by policy: allowed, limited (429), shadow (would have been limited), "
    "fail_open / fail_closed (Redis unreachable).",
    ["policy", "decision"],
)
RATELIMIT_REDIS_ERRORS = Counter(
    "ratelimit_redis_errors_total", "Rate-limit checks that could not reach Redis."
)
_ratelimit_children: dict[tuple[str, str], Any] = {}


def ratelimit(policy: str, decision: str) -> None:
    counter = _ratelimit_children.get((policy, decision))
    if counter is None:
        counter = _ratelimit_children[(policy, decision)] = child(
            RATELIMIT_DECISIONS, policy, decision
        )
    counter.inc()


class ActorMetrics:
    """The metric children of one actor, bound once so the hot path does no label lookups."""

    __slots__ = (
        "_duration",
        "_expired",
        "_failed",
        "_in_progress",
        "_mailbox",
        "_processed",
        "_rejected",
        "_restarts",
    )

    def __init__(self, actor: str) -> None:
        self._mailbox = child(ACTOR_MAILBOX, actor)
        self._in_progress = child(ACTOR_IN_PROGRESS, actor)
        self._processed = child(ACTOR_MESSAGES, actor, "processed")
        self._failed = child(ACTOR_MESSAGES, actor, "failed")
        self._rejected = child(ACTOR_MESSAGES, actor, "rejected")
        self._expired = child(ACTOR_MESSAGES, actor, "expired")
        self._restarts = child(ACTOR_RESTARTS, actor)
        self._duration = child(ACTOR_DURATION, actor)

    def mailbox(self, depth: int) -> None:
        self._mailbox.set(depth)

    def in_progress(self, count: int) -> None:
        self._in_progress.set(count)

    def processed(self, seconds: float) -> None:
        self._processed.inc()
        self._duration.observe(seconds)

    def failed(self, seconds: float) -> None:
        self._failed.inc()
        self._duration.observe(seconds)

    def rejected(self) -> None:
        self._rejected.inc()

    def expired(self) -> None:
        self._expired.inc()

    def restarted(self) -> None:
        self._restarts.inc()


# -- sampled gauges ------------------------------------------------------------------------

SAMPLE_INTERVAL = 5.0


class PoolLike(Protocol):
    """What the sampler reads of a connection pool (asyncpg's `Pool` has these)."""

    def get_size(self) -> int: ...
    def get_idle_size(self) -> int: ...
    def get_max_size(self) -> int: ...


_pools: dict[int, tuple[PoolLike, str, str]] = {}
_pool_labels: set[tuple[str, str]] = set()


def watch_pool(pool: PoolLike, name: str, target: str) -> Callable[[], None]:
    """Report the pool's size in `db_pool_*` until the returned function is called."""
    key = id(pool)
    _pools[key] = (pool, name, target)
    _pool_labels.add((name, target))
    sample_pools()

    def unwatch() -> None:
        _pools.pop(key, None)
        sample_pools()

    return unwatch


def sample_pools() -> None:
    """Publish every watched pool's size; label sets whose pools all closed go to zero."""
    totals = dict.fromkeys(_pool_labels, (0, 0, 0))
    for pool, name, target in _pools.values():
        size, idle, most = totals[(name, target)]
        totals[(name, target)] = (
            size + pool.get_size(),
            idle + pool.get_idle_size(),
            most + pool.get_max_size(),
        )
    for (name, target), (size, idle, most) in totals.items():
        DB_POOL_CONNECTIONS.labels(name, target, "idle").set(idle)
        DB_POOL_CONNECTIONS.labels(name, target, "in_use").set(size - idle)
        DB_POOL_MAX_CONNECTIONS.labels(name, target).set(most)


_process = ProcessCollector(registry=None)
_cpu_seen = 0.0


def sample_process() -> None:
    """Publish this process's memory, CPU, descriptors and start time."""
    global _cpu_seen
    values = {s.name: s.value for family in _process.collect() for s in family.samples}
    if not values:
        return  # no /proc here
    PROCESS_RESIDENT_MEMORY.set(values["process_resident_memory_bytes"])
    PROCESS_LARGEST_RESIDENT_MEMORY.set(values["process_resident_memory_bytes"])
    PROCESS_VIRTUAL_MEMORY.set(values["process_virtual_memory_bytes"])
    PROCESS_START_TIME.set(values["process_start_time_seconds"])
    PROCESS_OPEN_FDS.set(values["process_open_fds"])
    PROCESS_MAX_FDS.set(values["process_max_fds"])
    cpu = values["process_cpu_seconds_total"]
    if cpu > _cpu_seen:
        PROCESS_CPU.inc(cpu - _cpu_seen)
        _cpu_seen = cpu
    PROCESSES.set(1)


def sample() -> None:
    sample_process()
    sample_pools()


@asynccontextmanager
async def sampling() -> AsyncIterator[None]:
    """While the block runs, write batched updates every `FLUSH_INTERVAL` and sample this
    process's gauges every `SAMPLE_INTERVAL`; flush once more at the end."""

    async def loop() -> None:
        ticks = 0
        while True:
            if ticks % round(SAMPLE_INTERVAL / FLUSH_INTERVAL) == 0:
                sample()
            flush()
            ticks += 1
            await asyncio.sleep(FLUSH_INTERVAL)

    task = asyncio.create_task(loop(), name="metrics:sampling")
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        flush()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def exposition() -> tuple[bytes, str]:
    """The text a scrape gets: this process's metrics, or the sum over every process."""
    sample()
    flush()
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int, directory: str | None = None) -> None:
    """Drop a finished process's live gauges from the sums of `directory` (default: this
    process's own `PROMETHEUS_MULTIPROC_DIR`; a supervisor names its children's)."""
    directory = directory or multiprocess_dir()
    if directory:
        multiprocess.mark_process_dead(pid, directory)


def _at_exit() -> None:
    """A process leaving cleanly writes its last counts and takes its live gauges out of the
    sums itself (a supervisor does it for one that dies)."""
    flush()
    if multiprocess_dir():
        sample_process()
        mark_process_dead(os.getpid())


atexit.register(_at_exit)
