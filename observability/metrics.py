"""Prometheus metrics.

Every metric is a module-level prometheus-client object, so that with several API processes
(`PROMETHEUS_MULTIPROC_DIR` set by `backend serve --workers N`) one scrape reports their sum.
Labels are bounded: route templates, actor names, replica names, never raw input.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

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
    """The metric children of one job type on one topic, bound once."""

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
        self.enqueued = JOBS_ENQUEUED.labels(job_type, topic)
        self.started = JOBS_STARTED.labels(job_type, topic)
        self.succeeded = JOBS_SUCCEEDED.labels(job_type, topic)
        self.failed = JOBS_FAILED.labels(job_type, topic)
        self.retried = JOBS_RETRIED.labels(job_type, topic)
        self.dead = JOBS_DEAD.labels(job_type, topic)
        self.cancelled = JOBS_CANCELLED.labels(job_type, topic)
        self.returned = JOBS_RETURNED.labels(job_type, topic)
        self.duration = JOB_DURATION.labels(job_type, topic)
        self.running = JOBS_RUNNING.labels(topic)


_job_children: dict[tuple[str, str], JobMetrics] = {}


def job_metrics(job_type: str, topic: str) -> JobMetrics:
    found = _job_children.get((job_type, topic))
    if found is None:
        found = _job_children[(job_type, topic)] = JobMetrics(job_type, topic)
    return found


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
FILES_THUMBNAILS = Counter(
    "files_thumbnails_total", "Thumbnails made, by outcome: succeeded, failed.", ["outcome"]
)

_http_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def http_request(method: str, route: str, status: str) -> tuple[Any, Any]:
    """The request counter and duration histogram children for one label set, made once."""
    children = _http_children.get((method, route, status))
    if children is None:
        children = _http_children[(method, route, status)] = (
            HTTP_REQUESTS.labels(method, route, status),
            HTTP_DURATION.labels(method, route),
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
    child = _ratelimit_children.get((policy, decision))
    if child is None:
        child = _ratelimit_children[(policy, decision)] = RATELIMIT_DECISIONS.labels(
            policy, decision
        )
    child.inc()


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
        self._mailbox = ACTOR_MAILBOX.labels(actor)
        self._in_progress = ACTOR_IN_PROGRESS.labels(actor)
        self._processed = ACTOR_MESSAGES.labels(actor, "processed")
        self._failed = ACTOR_MESSAGES.labels(actor, "failed")
        self._rejected = ACTOR_MESSAGES.labels(actor, "rejected")
        self._expired = ACTOR_MESSAGES.labels(actor, "expired")
        self._restarts = ACTOR_RESTARTS.labels(actor)
        self._duration = ACTOR_DURATION.labels(actor)

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


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def exposition() -> tuple[bytes, str]:
    """The text a scrape gets: this process's metrics, or the sum over every process."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Drop a finished process's live gauges from the sums."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)


def serve_metrics(host: str, port: int) -> int:
    """Serve this process's own metrics on `port` (0: any free one), in a daemon thread, for
    processes with no HTTP server of their own (workers, the scheduler); returns the port."""
    server, _ = start_http_server(port, addr=host)
    return int(server.server_port)
