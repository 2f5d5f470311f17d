"""PostgreSQL: pools to the primary and its replicas, and where each query runs.

Writes and reads that must be current run on the primary (`Database.write`, `Database.primary`).
Reads that may be a little stale run on a healthy replica (`Database.read`) and fall back to
the primary when none is healthy, when none has replayed far enough (`read_floor`), or when the
chosen one fails on the way.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg
import orjson
from asyncpg.connection import LoggedQuery

from observability import metrics, tracing

log = logging.getLogger("backend.storage")

P = ParamSpec("P")
T = TypeVar("T")

Connection = asyncpg.Connection
Pool = asyncpg.Pool
Query = Callable[Concatenate[Connection, P], Awaitable[T]]

# The WAL position that reads in this context must observe (read-your-writes); 0 means any.
read_floor: contextvars.ContextVar[int] = contextvars.ContextVar("read_floor", default=0)

# Errors after which a replica is taken out of rotation and the read is run on the primary.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)
# Errors a replica may raise for one query (a conflict with recovery) without being unhealthy.
_RETRY_ON_PRIMARY = (asyncpg.SerializationError,)


def parse_lsn(text: str) -> int:
    """`'16/B374D848'` -> an integer that orders like the WAL position."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass
class ReplicaState:
    name: str
    up: bool = False
    replay_lsn: int = 0
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    error: str | None = None


def replica_name(index: int) -> str:
    """How replica `index` is named in metrics, logs and readiness."""
    return f"replica{index}"


class WalTimeline:
    """When the primary was at which WAL position, sampled by the health monitor.

    A replica's lag is how long ago the primary first went past the position the replica has
    replayed. Unlike `now() - pg_last_xact_replay_timestamp()`, this does not jump to the time
    since the last commit whenever a quiet replica is a moment behind a fresh write (which
    would take a healthy replica out of rotation after every idle spell).
    """

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        self._samples: deque[tuple[float, int]] = deque()  # (when, position), oldest first

    @property
    def head(self) -> int | None:
        return self._samples[-1][1] if self._samples else None

    def record(self, position: int, at: float) -> None:
        if not self._samples or position > self._samples[-1][1]:
            self._samples.append((at, position))
        while len(self._samples) > 1 and self._samples[0][0] < at - self.horizon:
            self._samples.popleft()

    def lag(self, replayed: int, now: float) -> float:
        """Seconds since the primary first went past `replayed` (0 when it has not)."""
        for at, position in self._samples:
            if position > replayed:
                return max(0.0, now - at)
        return 0.0


class ReplicaSet:
    """What is known of each replica's health: written by the health monitor, read by every
    `Database` in the process to route stale-tolerant reads."""

    def __init__(self, count: int, max_lag: float = 30.0) -> None:
        self.states = [ReplicaState(replica_name(i)) for i in range(count)]
        self.max_lag = max_lag
        self.primary = WalTimeline(horizon=2 * max_lag)
        self._turn = itertools.count()

    def pick(self, floor: int = 0) -> int | None:
        """A healthy replica that has replayed past `floor`, taking turns; None if there is none."""
        candidates = [
            i for i, state in enumerate(self.states) if state.up and state.replay_lsn >= floor
        ]
        if not candidates:
            return None
        return candidates[next(self._turn) % len(candidates)]

    def record(self, index: int, *, replay_lsn: int, at: float | None = None) -> None:
        """A replica answered with its replayed position: judge its lag against the primary."""
        now = time.monotonic() if at is None else at
        head = self.primary.head
        state = self.states[index]
        state.replay_lsn = replay_lsn
        state.lag_seconds = self.primary.lag(replay_lsn, now)
        state.lag_bytes = max(0, head - replay_lsn) if head is not None else None
        state.up = state.lag_seconds <= self.max_lag
        state.error = (
            None if state.up else f"lag {state.lag_seconds:.1f}s exceeds {self.max_lag:.1f}s"
        )
        _publish(state)

    def mark_down(self, index: int, error: BaseException | str) -> None:
        state = self.states[index]
        if state.up:
            log.warning("replica marked down", extra={"replica": state.name, "reason": str(error)})
        state.up = False
        state.error = str(error) or type(error).__name__
        _publish(state)

    @property
    def any_up(self) -> bool:
        return any(state.up for state in self.states)


def _publish(state: ReplicaState) -> None:
    metrics.DB_REPLICA_UP.labels(state.name).set(1 if state.up else 0)
    if state.lag_seconds is not None:
        metrics.DB_REPLICA_LAG.labels(state.name).set(state.lag_seconds)
    if state.lag_bytes is not None:
        metrics.DB_REPLICA_LAG_BYTES.labels(state.name).set(state.lag_bytes)


async def _init_connection(conn: Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


def _statement_span(query: LoggedQuery) -> None:
    """A client span for one statement, as asyncpg reports it just after it ran (in the
    context of the code that ran it, so inside the actor's span). Arguments are never recorded.

    asyncpg times every statement of a connection that has a query logger, so `_Acquire` adds
    it only to connections taken inside a recorded trace, for as long as they are held."""
    tracer = tracing.tracer
    if tracer is None or not tracing.recording():
        return
    end = time.time_ns()
    text = query.query.lstrip()
    operation = text.split(None, 1)[0].rstrip(";").upper() if text else "SQL"
    host, port = query.conn_addr if isinstance(query.conn_addr, tuple) else (query.conn_addr, None)
    span = tracer.start_span(
        operation,
        kind=tracing.SpanKind.CLIENT,
        start_time=end - int(query.elapsed * 1e9),
        attributes={
            "db.system.name": "postgresql",
            "db.namespace": getattr(query.conn_params, "database", None) or "",
            "db.operation.name": operation,
            "db.query.text": text[:_MAX_STATEMENT],
            "server.address": str(host),
            **({"server.port": port} if port else {}),
        },
    )
    if query.exception is not None:
        tracing.failed(span, query.exception)
    span.end(end_time=end)


_MAX_STATEMENT = 2000


def pool_target(index: int | None) -> str:
    """`primary`, or the replica's name: the `target` label of pool metrics."""
    return "primary" if index is None else replica_name(index)


@asynccontextmanager
async def open_pool(
    dsn: str,
    *,
    name: str,
    size: int,
    target: str = "primary",
    min_size: int = 0,
    connect_timeout: float = 5.0,
    command_timeout: float | None = 10.0,
    reset_sessions: bool = True,
) -> AsyncIterator[Pool]:
    """A connection pool, closed on exit. `name` (the owning actor) shows as application_name in
    pg_stat_activity (with `:ro` for a replica) and, with `target`, labels the pool's metrics.

    A released connection is reset (session settings, session advisory locks, LISTENs,
    cursors): a round trip per release. A pool whose users keep all their state inside
    transactions can pass `reset_sessions=False`; an open transaction is rolled back anyway."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min(min_size, size),
        max_size=size,
        timeout=connect_timeout,
        command_timeout=command_timeout,
        init=_init_connection,
        reset=None if reset_sessions else _keep_session,
        server_settings={"application_name": name if target == "primary" else f"{name}:ro"},
    )
    unwatch = metrics.watch_pool(pool, name, target)
    try:
        yield pool
    finally:
        unwatch()
        await pool.close()


async def _keep_session(conn: Connection) -> None:
    """Nothing to reset (asyncpg has already rolled back any open transaction)."""


class _Acquire:
    """`async with`: a connection from `pool`, the wait for it observed in
    `db_pool_wait_seconds`, its statements traced when taken inside a recorded trace."""

    __slots__ = ("_conn", "_pool", "_traced", "_wait")

    def __init__(self, pool: Pool, wait: Any) -> None:
        self._pool = pool
        self._wait = wait

    async def __aenter__(self) -> Connection:
        started = time.perf_counter()
        self._conn = conn = await self._pool.acquire()
        self._wait.observe(time.perf_counter() - started)
        self._traced = tracing.recording()
        if self._traced:
            conn.add_query_logger(_statement_span)
        return conn

    async def __aexit__(self, *exc_info: object) -> None:
        if self._traced:
            self._conn.remove_query_logger(_statement_span)
        await self._pool.release(self._conn)


def acquirer(pool: Pool, name: str, target: str) -> Callable[[], Any]:
    """`async with acquire() as conn:` `pool.acquire`, observed (metrics on) and traced
    (tracing on); plain `pool.acquire` when both are off."""
    wait = metrics.child(metrics.DB_POOL_WAIT, name, target)
    if wait is metrics.NULL and tracing.tracer is None:
        return pool.acquire
    return lambda: _Acquire(pool, wait)


class Database:
    """One actor's pools: one to the primary and one to each replica."""

    def __init__(
        self, primary: Pool, replicas: list[Pool], replica_set: ReplicaSet, *, name: str = "db"
    ) -> None:
        self._primary = acquirer(primary, name, pool_target(None))
        self._replicas = [acquirer(pool, name, pool_target(i)) for i, pool in enumerate(replicas)]
        self.replica_set = replica_set
        self._on_replica = metrics.child(metrics.DB_READS, "replica")
        self._on_primary = metrics.child(metrics.DB_READS, "primary")
        self._floored = {
            True: metrics.child(metrics.READS_AFTER_WRITE, "replica"),
            False: metrics.child(metrics.READS_AFTER_WRITE, "primary"),
        }

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        primary_dsn: str,
        replica_dsns: list[str],
        replica_set: ReplicaSet,
        *,
        name: str,
        size: int,
        connect_timeout: float = 5.0,
        command_timeout: float | None = 10.0,
        reset_sessions: bool = True,
    ) -> AsyncIterator[Database]:
        """Open the pools (the primary's eagerly, so a wrong URL fails at start) and close them."""
        options: dict[str, Any] = {
            "size": size,
            "connect_timeout": connect_timeout,
            "command_timeout": command_timeout,
            "reset_sessions": reset_sessions,
        }
        async with AsyncExitStack() as stack:
            primary = await stack.enter_async_context(
                open_pool(primary_dsn, name=name, min_size=1, **options)
            )
            replicas = [
                await stack.enter_async_context(
                    open_pool(dsn, name=name, target=pool_target(i), **options)
                )
                for i, dsn in enumerate(replica_dsns)
            ]
            yield cls(primary, replicas, replica_set, name=name)

    def primary(self) -> Any:
        """`async with db.primary() as conn:` a primary connection for multi-step work."""
        return self._primary()

    async def write(self, query: Query[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `query(conn, ...)` in one transaction on the primary."""
        async with self._primary() as conn, conn.transaction():
            return await query(conn, *args, **kwargs)

    async def read(self, query: Query[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `query(conn, ...)` on a healthy replica, or on the primary when none will do."""
        floor = read_floor.get()
        index = self.replica_set.pick(floor)
        if floor:
            self._floored[index is not None].inc()
        if index is not None:
            try:
                async with self._replicas[index]() as conn:
                    result = await query(conn, *args, **kwargs)
            except CONNECTION_ERRORS as error:
                self.replica_set.mark_down(index, error)
            except _RETRY_ON_PRIMARY:
                pass
            else:
                self._on_replica.inc()
                return result
        self._on_primary.inc()
        async with self._primary() as conn:
            return await query(conn, *args, **kwargs)


async def primary_position(conn: Connection | Pool) -> int:
    """The primary's current WAL position."""
    return parse_lsn(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))


async def replica_position(conn: Connection) -> int:
    """A replica's replayed WAL position."""
    row = await conn.fetchrow(
        "SELECT pg_is_in_recovery() AS standby, pg_last_wal_replay_lsn()::text AS replayed"
    )
    if not row["standby"] or row["replayed"] is None:
        raise RuntimeError("not a streaming replica (pg_is_in_recovery() is false)")
    return parse_lsn(row["replayed"])
