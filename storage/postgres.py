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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg
import orjson

from observability import metrics

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


class ReplicaSet:
    """What is known of each replica's health: written by the health monitor, read by every
    `Database` in the process to route stale-tolerant reads."""

    def __init__(self, count: int) -> None:
        self.states = [ReplicaState(f"replica{i}") for i in range(count)]
        self._turn = itertools.count()

    def pick(self, floor: int = 0) -> int | None:
        """A healthy replica that has replayed past `floor`, taking turns; None if there is none."""
        candidates = [
            i for i, state in enumerate(self.states) if state.up and state.replay_lsn >= floor
        ]
        if not candidates:
            return None
        return candidates[next(self._turn) % len(candidates)]

    def record(
        self, index: int, *, replay_lsn: int, lag_seconds: float, lag_bytes: int, max_lag: float
    ) -> None:
        state = self.states[index]
        state.replay_lsn = replay_lsn
        state.lag_seconds = lag_seconds
        state.lag_bytes = lag_bytes
        state.up = lag_seconds <= max_lag
        state.error = None if state.up else f"lag {lag_seconds:.1f}s exceeds {max_lag:.1f}s"
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


@asynccontextmanager
async def open_pool(
    dsn: str,
    *,
    name: str,
    size: int,
    min_size: int = 0,
    connect_timeout: float = 5.0,
    command_timeout: float | None = 10.0,
    reset_sessions: bool = True,
) -> AsyncIterator[Pool]:
    """A connection pool, closed on exit. `name` shows as application_name in pg_stat_activity.

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
        server_settings={"application_name": name},
    )
    try:
        yield pool
    finally:
        await pool.close()


async def _keep_session(conn: Connection) -> None:
    """Nothing to reset (asyncpg has already rolled back any open transaction)."""


class Database:
    """One actor's pools: one to the primary and one to each replica."""

    def __init__(self, primary: Pool, replicas: list[Pool], replica_set: ReplicaSet) -> None:
        self._primary = primary
        self._replicas = replicas
        self.replica_set = replica_set
        self._on_replica = metrics.DB_READS.labels("replica")
        self._on_primary = metrics.DB_READS.labels("primary")
        self._floored = {
            True: metrics.READS_AFTER_WRITE.labels("replica"),
            False: metrics.READS_AFTER_WRITE.labels("primary"),
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
                await stack.enter_async_context(open_pool(dsn, name=f"{name}:ro", **options))
                for dsn in replica_dsns
            ]
            yield cls(primary, replicas, replica_set)

    def primary(self) -> Any:
        """`async with db.primary() as conn:` a primary connection for multi-step work."""
        return self._primary.acquire()

    async def write(self, query: Query[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `query(conn, ...)` in one transaction on the primary."""
        async with self._primary.acquire() as conn, conn.transaction():
            return await query(conn, *args, **kwargs)

    async def read(self, query: Query[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `query(conn, ...)` on a healthy replica, or on the primary when none will do."""
        floor = read_floor.get()
        index = self.replica_set.pick(floor)
        if floor:
            self._floored[index is not None].inc()
        if index is not None:
            try:
                async with self._replicas[index].acquire() as conn:
                    result = await query(conn, *args, **kwargs)
            except CONNECTION_ERRORS as error:
                self.replica_set.mark_down(index, error)
            except _RETRY_ON_PRIMARY:
                pass
            else:
                self._on_replica.inc()
                return result
        self._on_primary.inc()
        async with self._primary.acquire() as conn:
            return await query(conn, *args, **kwargs)


async def primary_position(conn: Connection | Pool) -> int:
    """The primary's current WAL position."""
    return parse_lsn(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))


async def replica_position(conn: Connection) -> tuple[int, float]:
    """A replica's replayed WAL position and how far behind in time it is (0 when caught up)."""
    row = await conn.fetchrow(
        """
        SELECT pg_is_in_recovery() AS standby,
               pg_last_wal_replay_lsn()::text AS replayed,
               CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                    ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())
               END::float8 AS lag
        """
    )
    if not row["standby"] or row["replayed"] is None:
        raise RuntimeError("not a streaming replica (pg_is_in_recovery() is false)")
    return parse_lsn(row["replayed"]), max(0.0, row["lag"] or 0.0)
