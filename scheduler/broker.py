"""The broker: taskiq-redis's stream broker, one Redis stream per topic, with the gaps closed.

taskiq-redis 1.2.4's `RedisStreamBroker` gives acknowledged delivery (XREADGROUP + XACK) but,
read against its source, it:

* reclaims idle deliveries (XAUTOCLAIM) only after an XREADGROUP returned messages: with no
  new traffic a SIGKILLed worker's job waits forever. Here reclaim runs on a timer, between
  short blocking reads, whatever the traffic;
* has no heartbeat, so a job running longer than the idle timeout is taken over while its
  worker is healthy. Here a worker renews its deliveries (`heartbeat`);
* creates consumer groups at `$` when a worker starts, so what was sent before is skipped.
  Here groups start at `0` and are created by senders and workers alike, before any send;
* trims with `MAXLEN`, which can drop entries still pending or never delivered. Here `trim`
  removes only entries every consumer has acknowledged (`XTRIM MINID`);
* has no delayed delivery: retries with backoff and deferrals wait in a sorted set that
  `move_due` hands to the streams when due (atomically, whichever worker gets there first).

Messages are taskiq messages serialized as JSON (orjson), never pickle. The job's durable
record lives in PostgreSQL; a message carries only the job id and the trace context.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis, ResponseError
from taskiq import AckableMessage, BrokerMessage, TaskiqMessage
from taskiq.serializers import ORJSONSerializer
from taskiq_redis import RedisStreamBroker

from observability import metrics
from storage.batching import GroupCommit
from storage.redis import Keys

log = logging.getLogger("backend.jobs")

GROUP = "workers"

# Renew this consumer's claim on each id it still owns; answer the ids it no longer owns.
_RENEW = """
local lost = {}
for i = 3, #ARGV do
    local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
    if entry and entry[2] == ARGV[2] then
        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    else
        lost[#lost + 1] = ARGV[i]
    end
end
return lost
"""

# Hand due entries of the delayed set ("<stream>\\n<data>" members) to their streams.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
    local cut = string.find(member, '\\n', 1, true)
    redis.call('XADD', string.sub(member, 1, cut - 1), '*', 'data', string.sub(member, cut + 1))
    redis.call('ZREM', KEYS[1], member)
end
return #due
"""


class JobKeys:
    """The Redis keys of the jobs system, all under the settings' namespace."""

    def __init__(self, namespace: str) -> None:
        keys = Keys(namespace)
        self._keys = keys
        self.delayed = keys("jobs", "delayed")
        self.events = keys("jobs", "events")
        self.control = keys("jobs", "control")

    def stream(self, topic: str) -> str:
        return self._keys("jobs", "stream", topic)

    def connections(self, user_id: str) -> str:
        return self._keys("ws", "connections", user_id)

    def schedule(self, name: str) -> str:
        return self._keys("jobs", "schedule", name)


@dataclass(eq=False)
class Delivery:
    """One delivery of a message to this consumer, pending until acknowledged or handed on."""

    broker: JobBroker
    stream: str
    message_id: bytes
    data: bytes
    job_id: str
    received: float = field(default_factory=time.monotonic)
    settled: bool = False

    async def ack(self) -> None:
        if self.settled:
            return
        self.settled = True
        self.broker.forget(self)
        await self.broker.acks.submit((self.stream, self.message_id))


class JobBroker(RedisStreamBroker):
    """Streams for `topics`; `listen` reads all of them (a worker's subscription)."""

    def __init__(
        self,
        url: str,
        keys: JobKeys,
        topics: Sequence[str],
        *,
        consumer: str | None = None,
        claim_timeout: float = 30.0,
        reclaim_interval: float = 5.0,
        fetch: int = 16,
        pool_size: int = 16,
    ) -> None:
        if not topics:
            raise ValueError("a broker needs at least one topic")
        self.keys = keys
        self.topics = list(topics)
        self.streams = {keys.stream(topic): topic for topic in topics}
        block_ms = int(min(1.0, reclaim_interval) * 1000)
        first, *rest = self.streams
        super().__init__(
            url,
            queue_name=first,
            consumer_group_name=GROUP,
            consumer_name=consumer or f"worker-{uuid.uuid4().hex[:12]}",
            consumer_id="0",
            mkstream=True,
            xread_block=block_ms,
            xread_count=fetch,
            idle_timeout=int(claim_timeout * 1000),
            unacknowledged_batch_size=fetch,
            additional_streams=dict.fromkeys(rest, ">"),
            max_connection_pool_size=pool_size,
            # redis-py 8 times reads out after 5 s by default; a blocking read must not.
            socket_timeout=block_ms / 1000 + 5,
            socket_connect_timeout=5,
            timeout=10,
        )
        self.with_serializer(ORJSONSerializer())
        self.reclaim_interval = reclaim_interval
        # One client over the pool: building a client per command (as taskiq-redis does) costs
        # more than the command itself.
        self.redis = Redis(connection_pool=self.connection_pool)
        self.acks: GroupCommit[tuple[str, bytes], None] = GroupCommit(self._ack_many, name="ack")
        self._renew = self.redis.register_script(_RENEW)
        self._move_due = self.redis.register_script(_MOVE_DUE)
        self.in_flight: dict[tuple[str, bytes], Delivery] = {}

    # -- sending ----------------------------------------------------------------------------

    def message(self, job_id: str, job_type: str, topic: str, labels: dict[str, Any]) -> bytes:
        """The serialized taskiq message that runs job `job_id` of type `job_type`."""
        message = TaskiqMessage(
            task_id=job_id,
            task_name=job_type,
            labels={**labels, "queue_name": self.keys.stream(topic)},
            args=[job_id],
            kwargs={},
        )
        broker_message: BrokerMessage = self.formatter.dumps(message)
        return broker_message.message

    async def send(self, messages: Iterable[tuple[str, bytes]]) -> None:
        """Append (topic, message) pairs to their streams in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for topic, data in messages:
            pipe.xadd(self.keys.stream(topic), {b"data": data})
        await pipe.execute()

    async def send_later(self, topic: str, data: bytes, due: float) -> None:
        """Hold a message in the delayed set until `due` (epoch seconds)."""
        await self.redis.zadd(self.keys.delayed, {_delayed(self.keys.stream(topic), data): due})

    async def ensure_groups(self) -> None:
        """Create every topic's stream and consumer group (from the start) if missing."""
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    async def startup(self) -> None:
        await super().startup()
        await self.ensure_groups()

    # -- receiving --------------------------------------------------------------------------

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:  # type: ignore[override]
        """New deliveries from every topic, and on a timer the deliveries of dead consumers."""
        streams = dict.fromkeys(self.streams, ">")
        next_reclaim = 0.0
        redis = self.redis
        while True:
            if time.monotonic() >= next_reclaim:
                next_reclaim = time.monotonic() + self.reclaim_interval
                for delivery in await self._reclaim(redis):
                    yield AckableMessage(data=delivery.data, ack=delivery.ack)
            fetched = await redis.xreadgroup(
                GROUP, self.consumer_name, streams, count=self.count, block=self.block
            )
            for stream, entries in fetched or ():
                name = stream.decode()
                for message_id, fields in entries:
                    delivery = self._track(name, message_id, fields[b"data"])
                    yield AckableMessage(data=delivery.data, ack=delivery.ack)

    async def _reclaim(self, redis: Redis) -> list[Delivery]:
        """Take over deliveries idle longer than the claim timeout (their consumer is gone)."""
        found: list[Delivery] = []
        for stream in self.streams:
            start: Any = "0-0"
            while True:
                reply = await redis.xautoclaim(
                    stream,
                    GROUP,
                    self.consumer_name,
                    min_idle_time=self.idle_timeout,
                    start_id=start,
                    count=self.unacknowledged_batch_size,
                )
                start, entries = reply[0], reply[1]
                gone = [message_id for message_id, fields in entries if fields is None]
                if gone:  # trimmed away (Redis < 7 still lists them): nothing left to run
                    await redis.xack(stream, GROUP, *[i for i in gone if i is not None])
                for message_id, fields in entries:
                    if fields is not None:
                        found.append(self._track(stream, message_id, fields[b"data"]))
                if start in (b"0-0", "0-0") or len(found) >= self.unacknowledged_batch_size:
                    break
        for delivery in found:
            metrics.JOBS_RECLAIMED.labels(self.streams[delivery.stream]).inc()
        if found:
            log.info("reclaimed deliveries of a lost worker", extra={"count": len(found)})
        return found

    def _track(self, stream: str, message_id: bytes, data: bytes) -> Delivery:
        job_id = orjson.loads(data)["task_id"]
        delivery = Delivery(self, stream, message_id, data, job_id)
        self.in_flight[(stream, message_id)] = delivery
        return delivery

    async def _ack_many(self, deliveries: list[tuple[str, bytes]]) -> list[None]:
        """Acknowledge concurrent deliveries in one round trip."""
        by_stream: dict[str, list[bytes]] = {}
        for stream, message_id in deliveries:
            by_stream.setdefault(stream, []).append(message_id)
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, GROUP, *ids)
        await pipe.execute()
        return [None] * len(deliveries)

    def forget(self, delivery: Delivery) -> None:
        self.in_flight.pop((delivery.stream, delivery.message_id), None)

    def delivery_of(self, job_id: str) -> Delivery | None:
        """An unsettled delivery of `job_id` to this consumer (the oldest)."""
        for delivery in self.in_flight.values():
            if delivery.job_id == job_id and not delivery.settled:
                return delivery
        return None

    def topic_of(self, delivery: Delivery) -> str:
        return self.streams[delivery.stream]

    # -- keeping and handing on deliveries --------------------------------------------------

    async def heartbeat(self) -> list[Delivery]:
        """Renew every unsettled delivery; return the ones another consumer has taken."""
        by_stream: dict[str, list[Delivery]] = {}
        for delivery in list(self.in_flight.values()):
            if not delivery.settled:
                by_stream.setdefault(delivery.stream, []).append(delivery)
        lost: list[Delivery] = []
        for stream, deliveries in by_stream.items():
            ids = [d.message_id for d in deliveries]
            gone = set(await self._renew([stream], [GROUP, self.consumer_name, *ids]))
            lost += [d for d in deliveries if d.message_id in gone]
        return lost

    async def defer(self, delivery: Delivery, due: float) -> None:
        """Hand the message to the delayed set until `due` (epoch seconds) and settle it."""
        member = _delayed(delivery.stream, delivery.data)
        await self._settle(delivery, lambda pipe: pipe.zadd(self.keys.delayed, {member: due}))

    async def give_back(self, delivery: Delivery) -> None:
        """Put the message back at the end of its stream for another worker, and settle it."""
        await self._settle(
            delivery, lambda pipe: pipe.xadd(delivery.stream, {b"data": delivery.data})
        )

    async def _settle(self, delivery: Delivery, command: Any) -> None:
        if delivery.settled:
            return
        delivery.settled = True
        self.forget(delivery)
        pipe = self.redis.pipeline(transaction=True)
        command(pipe)
        pipe.xack(delivery.stream, GROUP, delivery.message_id)
        await pipe.execute()

    async def move_due(self, limit: int = 500) -> int:
        """Send delayed messages whose time has come to their streams; how many moved."""
        return int(await self._move_due([self.keys.delayed], [time.time(), limit]))

    async def trim(self) -> int:
        """Drop stream entries that every delivery of them has acknowledged."""
        removed = 0
        for stream in self.streams:
            floor = await _acknowledged_floor(self.redis, stream)
            if floor is not None:
                removed += await self.redis.xtrim(stream, minid=floor, approximate=False)
        return removed

    async def close(self) -> None:
        """Release the connection pool (what `shutdown` does, without taskiq's events)."""
        await self.connection_pool.disconnect()


def _delayed(stream: str, data: bytes) -> bytes:
    return stream.encode() + b"\n" + data


async def _acknowledged_floor(redis: Redis, stream: str) -> bytes | None:
    """The lowest id still needed by the group: its oldest pending entry, else the next one
    after its last delivery. None when the group has delivered nothing yet."""
    groups = await redis.xinfo_groups(stream)
    group = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
    if group is None or group["last-delivered-id"] in (b"0-0", "0-0"):
        return None
    pending = await redis.xpending(stream, GROUP)
    if pending["pending"]:
        return pending["min"]
    return group["last-delivered-id"]
