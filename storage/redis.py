"""Redis: clients (redis.asyncio over hiredis) and namespaced key names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import BlockingConnectionPool, Redis

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
