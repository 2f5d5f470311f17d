"""Storage against the real services: replication, read routing, migrations, Redis."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY

from config import Settings
from storage.migrations import MigrationError, discover, migrate
from storage.postgres import Connection, Database, ReplicaSet, read_floor
from storage.redis import Keys, open_redis
from tests.conftest import eventually


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    replicas = ReplicaSet(len(settings.replica_dsns))
    async with Database.open(
        settings.primary_dsn, settings.replica_dsns, replicas, name="test", size=2
    ) as database:
        yield database


async def in_recovery(conn: Connection) -> bool:
    return await conn.fetchval("SELECT pg_is_in_recovery()")


def mark_caught_up(db: Database) -> None:
    for index in range(len(db.replica_set.states)):
        db.replica_set.record(index, replay_lsn=2**62)


async def test_row_written_on_primary_is_readable_on_replica(
    settings: Settings, db: Database
) -> None:
    table = f"replicated_{secrets.token_hex(4)}"
    token = secrets.token_hex(8)

    async def write(conn: Connection) -> None:
        await conn.execute(f"CREATE TABLE {table} (token text)")
        await conn.execute(f"INSERT INTO {table} VALUES ($1)", token)

    await db.write(write)
    replica = await asyncpg.connect(settings.replica_dsns[0])
    try:
        assert await replica.fetchval("SELECT pg_is_in_recovery()")

        async def replicated() -> bool:
            try:
                return await replica.fetchval(f"SELECT token FROM {table}") == token
            except asyncpg.UndefinedTableError:
                return False

        await eventually(replicated)
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await replica.execute(f"INSERT INTO {table} VALUES ('nope')")
    finally:
        await replica.close()


async def test_reads_go_to_a_healthy_replica_and_writes_to_the_primary(db: Database) -> None:
    mark_caught_up(db)
    before = REGISTRY.get_sample_value("db_reads_total", {"target": "replica"}) or 0
    assert await db.read(in_recovery) is True
    assert await db.write(in_recovery) is False
    assert REGISTRY.get_sample_value("db_reads_total", {"target": "replica"}) == before + 1


async def test_reads_fall_back_to_primary_without_a_healthy_replica(db: Database) -> None:
    db.replica_set.mark_down(0, "stopped for the test")
    before = REGISTRY.get_sample_value("db_reads_total", {"target": "primary"}) or 0
    assert await db.read(in_recovery) is False
    assert REGISTRY.get_sample_value("db_reads_total", {"target": "primary"}) == before + 1


async def test_reads_that_must_see_a_write_skip_a_lagging_replica(db: Database) -> None:
    mark_caught_up(db)
    db.replica_set.states[0].replay_lsn = 100
    token = read_floor.set(101)
    try:
        assert await db.read(in_recovery) is False
    finally:
        read_floor.reset(token)
    assert await db.read(in_recovery) is True


async def test_a_replica_failing_mid_read_is_marked_down_and_the_read_retried(
    db: Database,
) -> None:
    mark_caught_up(db)
    calls: list[bool] = []

    async def flaky(conn: Connection) -> str:
        standby = await in_recovery(conn)
        calls.append(standby)
        if standby:
            raise ConnectionResetError("replica went away")
        return "from primary"

    assert await db.read(flaky) == "from primary"
    assert calls == [True, False]
    assert db.replica_set.states[0].up is False


# -- migrations ---------------------------------------------------------------------------


def write_migrations(directory: Path) -> None:
    (directory / "0001_first.sql").write_text(
        "SELECT pg_sleep(0.2); CREATE TABLE first (id int PRIMARY KEY);"
    )
    (directory / "0002_second.sql").write_text("ALTER TABLE first ADD COLUMN name text;")


async def test_concurrent_migrations_apply_each_once(empty_database: str, tmp_path: Path) -> None:
    write_migrations(tmp_path)
    results = await asyncio.gather(*(migrate(empty_database, tmp_path) for _ in range(4)))
    assert sorted(len(applied) for applied in results) == [0, 0, 0, 2]
    conn = await asyncpg.connect(empty_database)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'first'"
        )
    finally:
        await conn.close()
    assert [(r["version"], r["name"]) for r in rows] == [(1, "first"), (2, "second")]
    assert {c["column_name"] for c in columns} == {"id", "name"}


async def test_edited_migration_is_refused(empty_database: str, tmp_path: Path) -> None:
    write_migrations(tmp_path)
    await migrate(empty_database, tmp_path)
    (tmp_path / "0002_second.sql").write_text("ALTER TABLE first ADD COLUMN other text;")
    (tmp_path / "0003_third.sql").write_text("CREATE TABLE third (id int);")
    with pytest.raises(MigrationError, match=r"0002_second\.sql was edited after it was applied"):
        await migrate(empty_database, tmp_path)
    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT to_regclass('third')") is None  # nothing applied
    finally:
        await conn.close()


async def test_failed_migration_leaves_nothing_behind(empty_database: str, tmp_path: Path) -> None:
    (tmp_path / "0001_broken.sql").write_text("CREATE TABLE half (id int); SELECT 1/0;")
    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrate(empty_database, tmp_path)
    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0
    finally:
        await conn.close()


def test_badly_named_migration_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_Bad Name.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_lower_snake\.sql"):
        discover(tmp_path)


def test_shipped_migrations_are_well_formed() -> None:
    versions = [m.version for m in discover()]
    assert versions == sorted(set(versions))
    assert versions[0] == 1


# -- Redis ----------------------------------------------------------------------------------


async def test_redis_keys_are_namespaced(settings: Settings) -> None:
    keys = Keys(settings.redis_namespace)
    async with open_redis(settings.redis_dsn, name="test") as redis:
        await redis.set(keys("probe", 1), b"value", ex=30)
        assert await redis.get(f"{settings.redis_namespace}:probe:1") == b"value"
        name = await redis.client_getname()
    assert name == "test"


def test_replica_lag_is_time_since_the_primary_passed_its_position() -> None:
    replicas = ReplicaSet(1, max_lag=30)
    replicas.primary.record(100, at=0.0)
    replicas.primary.record(100, at=500.0)  # idle for minutes: still the first sample counts
    replicas.record(0, replay_lsn=100, at=600.0)
    assert replicas.states[0].lag_seconds == 0  # caught up, however long since a commit
    replicas.primary.record(200, at=600.0)
    replicas.record(0, replay_lsn=100, at=600.2)  # a moment behind a fresh write
    state = replicas.states[0]
    assert state.up
    assert state.lag_seconds == pytest.approx(0.2)
    assert state.lag_bytes == 100
    replicas.primary.record(300, at=620.0)
    replicas.record(0, replay_lsn=100, at=640.0)  # stuck: 40 s since the primary moved on
    assert replicas.states[0].lag_seconds == pytest.approx(40.0)
    assert not replicas.states[0].up
    assert "exceeds" in replicas.states[0].error
