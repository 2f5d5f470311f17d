"""The health actor: watches the primary, the replicas and Redis.

It polls each replica's replay position and lag into the process's `ReplicaSet`, which every
`Database` reads to route stale-tolerant reads, and it answers readiness checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from actors.runtime import Actor, Message, handler
from actors.system import ActorKey
from config import Settings
from storage.postgres import (
    Pool,
    ReplicaSet,
    format_lsn,
    open_pool,
    pool_target,
    primary_position,
    replica_position,
)
from storage.redis import open_redis

log = logging.getLogger("backend.health")

PROBE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Check:
    up: bool
    latency_ms: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Readiness:
    primary: Check
    redis: Check
    replicas: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.primary.up and self.redis.up

    @property
    def reads_on(self) -> str:
        if not self.replicas:
            return "primary"
        return "replica" if any(r["up"] for r in self.replicas) else "primary (no healthy replica)"


@dataclass(frozen=True, slots=True)
class CheckReadiness(Message[Readiness]):
    pass


class HealthMonitor(Actor):
    """Owns a small connection to each database and Redis; polls replicas on an interval."""

    def __init__(self, settings: Settings, replicas: ReplicaSet) -> None:
        self.settings = settings
        self.replicas = replicas
        self._stack = AsyncExitStack()
        self._primary: Pool
        self._replica_pools: list[Pool] = []
        self._redis: Redis
        self._poller: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        s = self.settings
        options = {"size": 2, "connect_timeout": PROBE_TIMEOUT, "command_timeout": PROBE_TIMEOUT}
        self._primary = await self._stack.enter_async_context(
            open_pool(s.primary_dsn, name="health", **options)
        )
        self._replica_pools = [
            await self._stack.enter_async_context(
                open_pool(dsn, name="health", target=pool_target(i), **options)
            )
            for i, dsn in enumerate(s.replica_dsns)
        ]
        self._redis = await self._stack.enter_async_context(
            open_redis(s.redis_dsn, name="health", size=2, timeout=PROBE_TIMEOUT)
        )
        await self._poll_replicas()
        self._poller = asyncio.create_task(self._poll_forever(), name="health:replicas")

    async def on_stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await self._stack.aclose()

    @handler
    async def readiness(self, message: CheckReadiness) -> Readiness:
        primary, redis, _ = await asyncio.gather(
            _timed(self._ping_primary()), _timed(self._redis.ping()), self._poll_replicas()
        )
        replicas = [
            {
                "name": state.name,
                "up": state.up,
                "replay_lsn": format_lsn(state.replay_lsn),
                "lag_seconds": state.lag_seconds,
                "lag_bytes": state.lag_bytes,
                **({"error": state.error} if state.error else {}),
            }
            for state in self.replicas.states
        ]
        return Readiness(primary=primary, redis=redis, replicas=replicas)

    async def _ping_primary(self) -> None:
        await self._primary.fetchval("SELECT 1")

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.replica_check_interval)
            await self._poll_replicas()

    async def _poll_replicas(self) -> None:
        if not self._replica_pools:
            return
        # The primary first: a replica is judged against where the primary was just before.
        with contextlib.suppress(Exception):  # down: replicas are judged on what was seen
            async with asyncio.timeout(PROBE_TIMEOUT):
                position = await primary_position(self._primary)
            self.replicas.primary.record(position, time.monotonic())
        await asyncio.gather(
            *(self._poll_replica(i, pool) for i, pool in enumerate(self._replica_pools))
        )

    async def _poll_replica(self, index: int, pool: Pool) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT), pool.acquire() as conn:
                replayed = await replica_position(conn)
        except Exception as error:
            self.replicas.mark_down(index, error)
            return
        self.replicas.record(index, replay_lsn=replayed)


async def _timed(probe: Awaitable[Any]) -> Check:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await probe
    except Exception as error:
        return Check(up=False, error=str(error) or type(error).__name__)
    return Check(up=True, latency_ms=round((time.perf_counter() - started) * 1000, 3))


HEALTH = ActorKey[HealthMonitor]("health")
