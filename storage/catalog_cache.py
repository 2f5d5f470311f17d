"""The catalog's cache: an in-process near cache over a shared Redis cache, kept coherent
with writes from every process.

Reads, cache-aside: near cache -> Redis -> the database (a replica), and the answer is kept
in both on the way back, as encoded JSON (a hit costs no encoding).

* **Items** (one product) live in Redis under `catalog:item:{id}` beside a version,
  `catalog:item-version:{id}`: the WAL position of the item's last write. A fill reads the
  version with the value (one MGET), reads the database at least at that position, and stores
  its answer only if the version is still the one it saw (a Lua compare-and-set). So a fill
  that raced a write can never park stale data in the cache.
* **Listings** (a page of a product query) live under `catalog:listing:{generation}:{hash}`.
  Every write bumps the catalog generation, which retires every cached listing at once; a
  listing fill is stored only if the generation is unchanged.
* **Writes** run one Lua script (one per event-loop tick for all its writes): bump the
  generation, raise the catalog's write position, set the changed items' versions, delete
  their cached values, and publish the change. Every
  process follows that channel (`storage.broadcast`) and drops the affected near-cache
  entries; the writing process does so before it answers.
* **The near cache** is used only while the subscription is live: when it is lost, it is
  emptied and bypassed (reads go to Redis) until the subscription is back. It is also bounded
  in size and age. Callers that must see their own recent write (a read floor) bypass it.
* **Single flight**: concurrent misses on one key in a process make one Redis read and at most
  one database read; the others wait for that answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import orjson
from redis.asyncio import Redis

from actors.errors import DependencyUnavailable
from observability import metrics
from storage.batching import TickBatch
from storage.broadcast import follow
from storage.freshness import stored_floor
from storage.redis import Keys

K = TypeVar("K", int, str)

# Loads an answer from the database, reading at least at the given WAL position.
Loader = Callable[[int], Awaitable[bytes]]

# "No such item": cached like any answer, so unknown ids cannot hammer the database.
TOMBSTONE = b""

# Stores a value only if the version it was read under is still current.
# KEYS: value, version. ARGV: the version seen, the value, lifetime (ms), an absent version.
_FILL = """
if (redis.call('GET', KEYS[2]) or ARGV[4]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 1
end
return 0
"""

# KEYS: generation, position, then (value, version) for each changed item.
# ARGV: position (16 hex digits), version lifetime (ms), channel, the item ids as JSON.
_INVALIDATE = """
local generation = redis.call('INCR', KEYS[1])
local position = redis.call('GET', KEYS[2])
if not position or position < ARGV[1] then
    redis.call('SET', KEYS[2], ARGV[1])
end
for i = 3, #KEYS, 2 do
    redis.call('DEL', KEYS[i])
    redis.call('SET', KEYS[i + 1], ARGV[1], 'PX', ARGV[2])
end
redis.call('PUBLISH', ARGV[3],
    '{"generation":' .. generation .. ',"position":"' .. ARGV[1] .. '","items":' .. ARGV[4] .. '}')
return generation
"""


@dataclass(eq=False)
class _Fill:
    """A load in progress that others may wait for; `stale` once a write overtook it."""

    future: asyncio.Future[bytes]
    stale: bool = False


@dataclass
class _Near:
    """A bounded map of encoded answers with an age limit (oldest entries leave first)."""

    size: int
    ttl: float
    entries: dict[Hashable, tuple[bytes, float]] = field(default_factory=dict)

    def get(self, key: Hashable) -> bytes | None:
        entry = self.entries.get(key)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key: Hashable, body: bytes) -> None:
        if len(self.entries) >= self.size:
            del self.entries[next(iter(self.entries))]
        self.entries[key] = (body, time.monotonic() + self.ttl)


class CatalogCache:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        ttl: float,
        near_ttl: float,
        near_size: int,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_ms = int(ttl * 1000)
        self._items = _Near(near_size, near_ttl)
        self._listings = _Near(near_size, near_ttl)
        self._item_fills: dict[int, _Fill] = {}
        self._listing_fills: dict[str, _Fill] = {}
        self._generation = 0  # the listing generation, as last heard
        self._position = 0  # the newest catalog write position heard of
        self._live = False  # the near cache is on: subscribed, nothing missed since
        self._generation_key = keys("catalog", "generation")
        self._position_key = keys("catalog", "position")
        self._channel = keys("catalog", "changes")
        self._fill = redis.register_script(_FILL)
        self._invalidate = redis.register_script(_INVALIDATE)
        self._invalidations = TickBatch(self._invalidate_together)
        self._follower: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._near_hit = metrics.child(metrics.CACHE_LOOKUPS, "near", "hit")
        self._near_miss = metrics.child(metrics.CACHE_LOOKUPS, "near", "miss")
        self._redis_hit = metrics.child(metrics.CACHE_LOOKUPS, "redis", "hit")
        self._redis_miss = metrics.child(metrics.CACHE_LOOKUPS, "redis", "miss")

    async def start(self, timeout: float) -> None:
        """Follow the change channel; wait (up to `timeout`) for the first subscription."""
        self._follower = asyncio.create_task(
            follow(
                self._redis,
                self._channel,
                on_message=self._heard,
                on_connect=self._subscribed,
                on_lost=self._lost,
            ),
            name="catalog:changes",
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._connected.wait()

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)

    # -- reads -------------------------------------------------------------------------------

    async def item(self, item_id: int, load: Loader, floor: int = 0) -> bytes:
        """Item `item_id`'s encoded answer (`TOMBSTONE` if there is none)."""
        return await self._read(
            self._items, self._item_fills, item_id, self._load_item, load, floor
        )

    async def listing(self, query: str, load: Loader, floor: int = 0) -> bytes:
        """The encoded page for `query` (a canonical text of the query and its cursor)."""
        return await self._read(
            self._listings, self._listing_fills, query, self._load_listing, load, floor
        )

    async def _read(
        self,
        near: _Near,
        fills: dict[K, _Fill],
        key: K,
        fill_from: Callable[[K, Loader, int, _Fill | None], Awaitable[bytes]],
        load: Loader,
        floor: int,
    ) -> bytes:
        if floor:  # the caller must see its own write: past the near cache, on its own
            return await fill_from(key, load, floor, None)
        if self._live:
            body = near.get(key)
            if body is not None:
                self._near_hit.inc()
                return body
            self._near_miss.inc()
        return await _single_flight(fills, key, lambda fill: fill_from(key, load, 0, fill))

    async def _load_item(self, item_id: int, load: Loader, floor: int, fill: _Fill | None) -> bytes:
        key, version_key = self._item_keys(item_id)
        body, version = await self._redis.mget(key, version_key)
        if body is not None:
            self._redis_hit.inc()
        else:
            self._redis_miss.inc()
            metrics.CACHE_LOADS.labels("item").inc()
            body = await load(max(floor, stored_floor(version)))
            kept = await self._fill(
                keys=[key, version_key], args=[version or b"", body, self._ttl_ms, ""]
            )
            if not kept:
                metrics.CACHE_FILLS_SKIPPED.inc()
        self._keep(self._items, item_id, body, fill)
        return body

    async def _load_listing(
        self, query: str, load: Loader, floor: int, fill: _Fill | None
    ) -> bytes:
        generation = self._generation
        if floor:  # the caller just wrote: the generation heard of may be behind Redis's
            generation = int(await self._redis.get(self._generation_key) or 0)
        digest = hashlib.blake2b(query.encode(), digest_size=16).hexdigest()
        key = self._keys("catalog", "listing", generation, digest)
        body = await self._redis.get(key)
        if body is not None:
            self._redis_hit.inc()
        else:
            self._redis_miss.inc()
            metrics.CACHE_LOADS.labels("listing").inc()
            body = await load(max(floor, self._position))
            kept = await self._fill(
                keys=[key, self._generation_key], args=[generation, body, self._ttl_ms, "0"]
            )
            if not kept:
                metrics.CACHE_FILLS_SKIPPED.inc()
        self._keep(self._listings, query, body, fill)
        return body

    def _keep(self, near: _Near, key: Hashable, body: bytes, fill: _Fill | None) -> None:
        if fill is None or not self._live:
            return
        if fill.stale:
            metrics.CACHE_FILLS_SKIPPED.inc()
            return
        near.put(key, body)

    # -- writes ------------------------------------------------------------------------------

    async def invalidate(self, item_ids: Sequence[int], position: int) -> None:
        """After a write that committed at WAL `position` and changed `item_ids`: retire
        what every process has cached of them, and every listing."""
        generation = await self._invalidations((tuple(item_ids), position))
        self._apply(generation, position, item_ids)

    async def _invalidate_together(self, changes: list[tuple[tuple[int, ...], int]]) -> list[int]:
        """The invalidations of one event-loop tick, as one script call."""
        item_ids = sorted({item_id for ids, _ in changes for item_id in ids})
        position = max(position for _, position in changes)
        keys = [self._generation_key, self._position_key]
        for item_id in item_ids:
            keys.extend(self._item_keys(item_id))
        generation = await self._invalidate(
            keys=keys,
            args=[
                f"{position:016x}",
                self._ttl_ms * 2,  # a version outlives every value filled under it
                self._channel,
                orjson.dumps(item_ids),
            ],
        )
        return [int(generation)] * len(changes)

    def _apply(self, generation: int, position: int, item_ids: Sequence[int]) -> None:
        self._generation = max(self._generation, generation)
        self._position = max(self._position, position)
        for item_id in item_ids:
            self._items.entries.pop(item_id, None)
            if (fill := self._item_fills.get(item_id)) is not None:
                fill.stale = True
        self._drop_listings()

    def _drop_listings(self) -> None:
        self._listings.entries.clear()
        for fill in self._listing_fills.values():
            fill.stale = True

    # -- the change channel ------------------------------------------------------------------

    def _heard(self, data: bytes) -> None:
        change = orjson.loads(data)
        metrics.CACHE_INVALIDATIONS.inc()
        self._apply(change["generation"], int(change["position"], 16), change["items"])

    async def _subscribed(self) -> None:
        """Messages may have been missed before now: start afresh from Redis's state."""
        generation, position = await self._redis.mget(self._generation_key, self._position_key)
        self._forget_everything()
        self._generation = int(generation or 0)
        self._position = max(self._position, stored_floor(position))
        self._live = True
        self._connected.set()

    def _lost(self) -> None:
        self._live = False
        self._forget_everything()

    def _forget_everything(self) -> None:
        self._items.entries.clear()
        for fill in self._item_fills.values():
            fill.stale = True
        self._drop_listings()

    def _item_keys(self, item_id: int) -> tuple[str, str]:
        return self._keys("catalog", "item", item_id), self._keys(
            "catalog", "item-version", item_id
        )


async def _single_flight(
    fills: dict[K, _Fill], key: K, run: Callable[[_Fill], Awaitable[bytes]]
) -> bytes:
    """Run `run` for `key` unless a run for it is in progress; then wait for that one."""
    fill = fills.get(key)
    if fill is not None:
        return await asyncio.shield(fill.future)
    fill = _Fill(asyncio.get_running_loop().create_future())
    fill.future.add_done_callback(_consume)
    fills[key] = fill
    try:
        body = await run(fill)
    except BaseException as error:
        failure = error if isinstance(error, Exception) else None
        fill.future.set_exception(
            failure or DependencyUnavailable("catalog", "the cache fill was interrupted")
        )
        raise
    else:
        fill.future.set_result(body)
        return body
    finally:
        del fills[key]


def _consume(future: asyncio.Future[bytes]) -> None:
    """Mark a fill's failure as seen even when nobody waited for it."""
    if not future.cancelled():
        future.exception()
