"""Redis: clients (redis.asyncio over hiredis) and namespaced key names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

# Errors that mean Redis itself is unreachable, as opposed to a bad command.
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from observability import tracing

REDIS_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)

T = TypeVar("T")


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
    client = (Redis if tracing.tracer is None else TracedRedis).from_pool(pool)
    try:
        yield client
    finally:
        await client.aclose()


class TracedRedis(Redis):
    """A client that makes a client span per command, and per pipeline, inside a sampled trace.
    Keys and values are never recorded (keys may hold token ids)."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if not tracing.recording():
            return await super().execute_command(*args, **options)
        return await _traced(
            self, str(args[0]).upper(), 1, super().execute_command(*args, **options)
        )

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return TracedPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )


class TracedPipeline(Pipeline):
    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if not tracing.recording() or not self.command_stack:
            return await super().execute(raise_on_error)
        operation = "MULTI" if self.is_transaction or self.explicit_transaction else "PIPELINE"
        count = len(self.command_stack)
        return await _traced(self, operation, count, super().execute(raise_on_error))


async def _traced(client: Redis, operation: str, count: int, call: Awaitable[T]) -> T:
    options = client.connection_pool.connection_kwargs
    attributes: dict[str, Any] = {
        "db.system.name": "redis",
        "db.operation.name": operation,
        "db.namespace": str(options.get("db", 0)),
        "server.address": str(options.get("host", options.get("path", ""))),
    }
    if "port" in options:
        attributes["server.port"] = options["port"]
    if count > 1:
        attributes["db.operation.batch.size"] = count
    with tracing.start(operation, kind=tracing.SpanKind.CLIENT, attributes=attributes) as span:
        try:
            return await call
        except Exception as error:
            tracing.failed(span, error)
            raise


class Keys:
    """Redis key names under one namespace, so several environments can share a server."""

    __slots__ = ("prefix",)

    def __init__(self, namespace: str) -> None:
        self.prefix = f"{namespace}:"

    def __call__(self, *parts: str | int) -> str:
        return self.prefix + ":".join(map(str, parts))
