"""Redis: clients (redis.asyncio over hiredis) and namespaced key names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

# Errors that mean Redis itself is unreachable, as opposed to a bad command.
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIS_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)


@asynccontextmanager
async def open_redis(
    url: str,
    *,
    name: str,
    size: int = 32,
    timeout: float = 5.0,
) -> AsyncIterator[Redis]:
    """A client whose pool holds at most `size` connections; callers beyond that wait up to
    `timeout` seconds for one. `name` shows in `CLIENT LIST`."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=size,
        timeout=timeout,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        client_name=name,
        health_check_interval=30,
        # A pooled connection that went stale (Redis restarted, a failover) is replaced and
        # the command retried, instead of failing the request that happened to pick it.
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), retries=2),
        retry_on_error=[RedisConnectionError],
    )
    client = Redis.from_pool(pool)
    try:
        yield client
    finally:
        await client.aclose()


class Keys:
    """Redis key names under one namespace, so several environments can share a server."""

    __slots__ = ("prefix",)

    def __init__(self, namespace: str) -> None:
        self.prefix = f"{namespace}:"

    def __call__(self, *parts: str | int) -> str:
        return self.prefix + ":".join(map(str, parts))
