"""Read-your-writes: the WAL position a caller's reads must see.

A write that commits on the primary reaches the replicas a moment later. So that a client
never reads its own write stale, every write reports the primary's WAL position after its
commit, and that position travels two ways:

* back to the client in the `X-Read-After` response header, which the client may send with
  its next requests (it works across users, devices and processes);
* into a short per-user window in Redis (`READ_YOUR_WRITES_SECONDS`), so that the same user's
  next requests carry it even when the client ignores the header.

Authentication turns the larger of the two into `storage.postgres.read_floor`, and reads skip
the replicas that have not replayed that far, using the primary meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Generic, ParamSpec, TypeVar

from redis.asyncio import Redis

from storage.batching import TickBatch
from storage.postgres import (
    Database,
    Query,
    format_lsn,
    parse_lsn,
    read_floor,
)
from storage.redis import Keys

P = ParamSpec("P")
T = TypeVar("T")

HEADER: Final = "X-Read-After"

# For each key, keeps the larger of the stored and the given position and renews the window.
# Positions are 16 hex digits, so comparing the strings compares the positions.
# KEYS: one per user. ARGV: a position per key, then the window in milliseconds.
_REMEMBER = """
local window = ARGV[#KEYS + 1]
for i, key in ipairs(KEYS) do
    local current = redis.call('GET', key)
    if current and current >= ARGV[i] then
        redis.call('PEXPIRE', key, window)
    else
        redis.call('SET', key, ARGV[i], 'PX', window)
    end
end
"""


@dataclass(frozen=True, slots=True)
class Written(Generic[T]):
    """What a write produced, and the WAL position that shows it."""

    value: T
    position: int


class WriteFloors:
    """Each user's recent write position, kept in Redis for a short window (the writes
    remembered during one event-loop tick go to Redis together)."""

    def __init__(self, redis: Redis, keys: Keys, window_seconds: float) -> None:
        self._keys = keys
        self._window_ms = int(window_seconds * 1000)
        self._remember = redis.register_script(_REMEMBER)
        self._batch = TickBatch(self._send)

    def key(self, user_id: str) -> str:
        return self._keys("floor", user_id)

    async def remember(self, user_id: str, position: int) -> None:
        if self._window_ms:
            await self._batch((self.key(user_id), position))

    async def _send(self, floors: list[tuple[str, int]]) -> list[None]:
        keys = [key for key, _ in floors]
        positions = [f"{position:016x}" for _, position in floors]
        await self._remember(keys=keys, args=[*positions, self._window_ms])
        return [None] * len(floors)


def stored_floor(value: bytes | None) -> int:
    """A position as `WriteFloors` stores it (absent: 0)."""
    return int(value, 16) if value else 0


def header_floor(value: str | None) -> int:
    """A position as clients send it (`16/B374D848`); `ValueError` if malformed."""
    if not value:
        return 0
    high, sep, low = value.partition("/")
    if not sep or not 0 < len(high) <= 8 or not 0 < len(low) <= 8:
        raise ValueError("expected a WAL position such as 16/B374D848")
    return parse_lsn(value)


def header_value(position: int) -> str:
    return format_lsn(position)


async def write_with_position(
    db: Database, query: Query[P, T], *args: P.args, **kwargs: P.kwargs
) -> tuple[T, int]:
    """Run `query(conn, ...)` in one transaction on the primary; return its result and the
    WAL position after the commit, which a replica must have replayed to show the write."""
    async with db.primary() as conn, conn.transaction():
        result = await query(conn, *args, **kwargs)
    return result, await db.position()


@contextmanager
def reading_after(position: int) -> Iterator[None]:
    """Reads inside see at least WAL `position` (and whatever floor was already set)."""
    token = read_floor.set(max(read_floor.get(), position))
    try:
        yield
    finally:
        read_floor.reset(token)
