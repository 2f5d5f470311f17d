"""Rate-limit state in Redis: GCRA, evaluated atomically by one Lua script on Redis's clock.

GCRA (the generic cell rate algorithm) is a token bucket kept as one number per key: the
theoretical arrival time (TAT) of the next request. A bucket of `capacity` that refills at
`per_second` admits a request of `cost` when `TAT + cost * interval - capacity * interval`
is not in the future. Every server process shares the same Redis keys and Redis's own clock
(`TIME`), so limits hold exactly across processes whatever their clocks say.

A Redis command costs the client far more CPU than the script costs Redis, so the charges
made during one event-loop tick go to Redis together, as one script call over all their keys,
evaluated in order: a request costs at most one round trip, and under load much less.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from storage.batching import TickBatch

# KEYS: one bucket per charge. ARGV: capacity, interval (microseconds per token), cost - for
# each key in turn. Returns, for each key: allowed, remaining, retry_after_us, reset_after_us.
_GCRA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local out = {}
for i, key in ipairs(KEYS) do
    local capacity = tonumber(ARGV[3 * i - 2])
    local interval = tonumber(ARGV[3 * i - 1])
    local cost = tonumber(ARGV[3 * i])
    local tat = tonumber(redis.call('GET', key)) or now
    if tat < now then tat = now end
    local burst = capacity * interval
    local new_tat = tat + cost * interval
    local allow_at = new_tat - burst
    if allow_at > now then
        table.insert(out, 0)
        table.insert(out, math.floor((burst - (tat - now)) / interval))
        table.insert(out, allow_at - now)
        table.insert(out, tat - now)
    else
        -- %.0f: Lua's default number format (%.14g) would drop a microsecond TAT's last digits
        redis.call('SET', key, string.format('%.0f', new_tat),
                   'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
        table.insert(out, 1)
        table.insert(out, math.floor((burst - (new_tat - now)) / interval))
        table.insert(out, 0)
        table.insert(out, new_tat - now)
    end
end
return out
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int  # requests of cost 1 that would be admitted right now
    retry_after: float  # seconds until this request would be admitted (0 when allowed)
    reset_after: float  # seconds until the bucket is full again


@dataclass(frozen=True, slots=True)
class _Charge:
    key: str
    capacity: int
    interval: float
    cost: int


class Buckets:
    """Token buckets in Redis, charged in batches (the script is called by SHA)."""

    def __init__(self, redis: Redis) -> None:
        self._gcra = redis.register_script(_GCRA)
        self._charges = TickBatch(self._send)

    async def take(self, key: str, *, capacity: int, per_second: float, cost: int = 1) -> Decision:
        return await self._charges(_Charge(key, capacity, 1_000_000 / per_second, cost))

    async def _send(self, batch: list[_Charge]) -> list[Decision]:
        args: list[float] = []
        for charge in batch:
            args += (charge.capacity, charge.interval, charge.cost)
        flat = await self._gcra(keys=[charge.key for charge in batch], args=args)
        return [
            Decision(
                allowed=bool(allowed),
                remaining=max(0, int(remaining)),
                retry_after=int(retry_us) / 1_000_000,
                reset_after=int(reset_us) / 1_000_000,
            )
            for allowed, remaining, retry_us, reset_us in zip(*[iter(flat)] * 4, strict=True)
        ]
