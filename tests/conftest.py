"""Shared fixtures.

One set of services serves the whole run: the URLs in the environment if given, else the
embedded primary + replica + Redis in `.run/test`, started here (and stopped at the end when
this run started them). Each run gets its own database and its own Redis namespace, so runs
and tests are isolated by data, not by restarting servers. Tests that stop a service (Redis
down, replica down) stop embedded ones only: the run's own, or, when the run was given URLs,
a second embedded set started for them (`stoppable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from config import Settings, load_settings
from server.app import create_app
from server.cli import embedded_needs
from storage.embedded import SERVICES, EmbeddedServices, ServiceUrls
from storage.migrations import migrate

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ("tests.jobs_support",)  # job_settings, jobs_api, worker: for job modules
os.environ.setdefault("ENV_FILE", str(ROOT / ".env.test"))


def with_database(url: str, name: str) -> str:
    """The same server URL, pointing at database `name`."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until `check()` is true; fail the test after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - polling another system is the point
            await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings(state_dir=ROOT / ".run" / "test")


@pytest.fixture(scope="session")
def embedded(base_settings: Settings) -> EmbeddedServices:
    return EmbeddedServices(base_settings.state_dir)


@pytest.fixture(scope="session")
def services(base_settings: Settings, embedded: EmbeddedServices) -> Iterator[ServiceUrls]:
    needed = embedded_needs(base_settings)
    before = {s.name for s in embedded.status() if s.running}
    urls = embedded.start(needed) if needed else None
    given = ServiceUrls(
        database_url=(
            base_settings.primary_dsn if base_settings.database_url else urls.database_url
        ),
        replica_urls=(
            base_settings.replica_dsns if base_settings.database_url else urls.replica_urls
        ),
        redis_url=base_settings.redis_dsn if base_settings.redis_url else urls.redis_url,
    )
    yield given
    started_here = tuple(name for name in needed if name not in before)
    if started_here:
        embedded.stop(started_here)


@dataclass(frozen=True)
class Stoppable:
    """Embedded services a test may stop and start again, and their URLs."""

    embedded: EmbeddedServices
    urls: ServiceUrls


@pytest.fixture(scope="session")
def stoppable(
    base_settings: Settings, embedded: EmbeddedServices, services: ServiceUrls
) -> Iterator[Stoppable]:
    """The run's services when they are all embedded; else (services given by URL, which a
    test must not stop) an embedded set of these tests' own, started on first use."""
    if set(embedded_needs(base_settings)) == set(SERVICES):
        yield Stoppable(embedded, services)
        return
    own = EmbeddedServices(base_settings.state_dir / "stoppable")
    urls = own.start()
    try:
        yield Stoppable(own, urls)
    finally:
        own.stop()


@pytest.fixture(scope="session")
async def database(services: ServiceUrls) -> AsyncIterator[ServiceUrls]:
    """A fresh, migrated database for this run, visible on the primary and every replica."""
    async with fresh_database(services) as urls:
        yield urls


@contextlib.asynccontextmanager
async def fresh_database(services: ServiceUrls) -> AsyncIterator[ServiceUrls]:
    """A new migrated database on the same servers, dropped on exit (for the run, or for a
    test that needs data no other test can touch)."""
    name = f"test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    urls = ServiceUrls(
        database_url=with_database(services.database_url, name),
        replica_urls=[with_database(url, name) for url in services.replica_urls],
        redis_url=services.redis_url,
    )
    await migrate(urls.database_url)
    for replica in urls.replica_urls:
        await eventually(lambda replica=replica: _can_connect(replica))
    try:
        yield urls
    finally:
        admin = await asyncpg.connect(services.database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def empty_database(services: ServiceUrls) -> AsyncIterator[str]:
    """A new database with nothing in it, not even the migrations, dropped after the test."""
    name = f"migrations_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(services.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(services.database_url, name)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def _can_connect(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def settings(base_settings: Settings, database: ServiceUrls) -> Settings:
    return settings_for(database, base_settings)


def settings_for(urls: ServiceUrls, base: Settings, **overrides: Any) -> Settings:
    """Settings for the test database and a Redis namespace of this run's own."""
    return load_settings(
        state_dir=base.state_dir,
        database_url=urls.database_url,
        database_replica_urls=",".join(urls.replica_urls),
        redis_url=urls.redis_url,
        redis_namespace=f"test-{secrets.token_hex(4)}",
        **overrides,
    )


@pytest.fixture
async def app(settings: Settings) -> web.Application:
    return await create_app(settings)


@pytest.fixture
async def client(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], app: web.Application
) -> TestClient:
    return await aiohttp_client(app)


@pytest.fixture(scope="session")
async def api(settings: Settings) -> AsyncIterator[TestClient]:
    """One app and client for the whole run, shared by the tests that only talk HTTP to it
    (isolated by their data): far cheaper than an app per test."""
    async with TestClient(TestServer(await create_app(settings))) as client:
        yield client
