"""The pools a domain actor opens, sized and timed by the settings."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from redis.asyncio import Redis

from config import Settings
from storage.postgres import Database, ReplicaSet
from storage.redis import open_redis

_FROM_SETTINGS = object()


def database(
    settings: Settings,
    replicas: ReplicaSet,
    name: str,
    *,
    size: int | None = None,
    command_timeout: float | object | None = _FROM_SETTINGS,
) -> AbstractAsyncContextManager[Database]:
    """Pools to the primary and each replica, of `DB_POOL_SIZE` unless `size` says otherwise.
    The domain actors keep no session state on a connection (their locks and settings live
    inside transactions), so released connections skip the session reset, a round trip each."""
    return Database.open(
        settings.primary_dsn,
        settings.replica_dsns,
        replicas,
        name=name,
        size=size or settings.db_pool_size,
        connect_timeout=settings.db_connect_timeout,
        command_timeout=(
            settings.db_command_timeout if command_timeout is _FROM_SETTINGS else command_timeout  # type: ignore[arg-type]
        ),
        reset_sessions=False,
    )


def redis(settings: Settings, name: str) -> AbstractAsyncContextManager[Redis]:
    return open_redis(settings.redis_dsn, name=name, size=settings.redis_pool_size)
