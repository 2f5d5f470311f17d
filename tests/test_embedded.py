"""The embedded services: idempotent start, remembered ports, stopping only what they own."""

from __future__ import annotations

import asyncio
import json
import stat
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis

from tests.conftest import Stoppable


def test_start_is_idempotent(stoppable: Stoppable) -> None:
    embedded = stoppable.embedded
    before = {s.name: s.pid for s in embedded.status()}
    assert embedded.start() == stoppable.urls
    assert {s.name: s.pid for s in embedded.status()} == before
    assert all(pid is not None for pid in before.values())


def test_state_is_private_and_restart_reuses_the_port(stoppable: Stoppable) -> None:
    embedded, services = stoppable.embedded, stoppable.urls
    state_file = embedded.root / "services.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    port = json.loads(state_file.read_text())["redis_port"]
    client = redis.Redis.from_url(services.redis_url)
    client.set("embedded-test:survives", "yes")

    embedded.stop(("redis",))
    [status] = [s for s in embedded.status() if s.name == "redis"]
    assert not status.running
    embedded.start(("redis",))

    assert embedded.urls() == services
    assert client.get("embedded-test:survives") == b"yes"  # appendonly: data kept
    assert [s.port for s in embedded.status() if s.name == "redis"] == [port]
    client.close()


def test_services_refuse_unauthenticated_clients(stoppable: Stoppable) -> None:
    services = stoppable.urls
    cache = urlsplit(services.redis_url)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=cache.hostname, port=cache.port).ping()
    db = urlsplit(services.database_url)
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(
            asyncpg.connect(
                host=db.hostname,
                port=db.port,
                user=db.username,
                password="wrong",
                database="postgres",
            )
        )
