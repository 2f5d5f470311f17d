"""Job events between processes: written to PostgreSQL, then announced on Redis pub/sub.

Whoever commits events (the API enqueueing, a worker running jobs) publishes them on one
channel per namespace, a batch per message; every API process subscribes and pushes each event
to the WebSocket clients that want it. Pub/sub is fire-and-forget: a process that misses an
announcement loses nothing, since clients resume from the event log with `since`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson
from redis.asyncio import Redis

from observability import metrics
from scheduler.model import JobEvent
from storage.redis import REDIS_UNAVAILABLE

log = logging.getLogger("backend.jobs")


def encode(events: Sequence[JobEvent]) -> bytes:
    return orjson.dumps([astuple(event) for event in events])


def decode(payload: bytes) -> list[JobEvent]:
    return [JobEvent(*item) for item in orjson.loads(payload)]


def astuple(event: JobEvent) -> tuple[object, ...]:
    """The event's fields in order (`dataclasses.astuple` deep-copies: too slow here)."""
    return tuple(getattr(event, name) for name in JobEvent.__slots__)


class Publisher:
    def __init__(self, redis: Redis, channel: str) -> None:
        self.redis = redis
        self.channel = channel
        self._published = metrics.child(metrics.JOB_EVENTS_PUBLISHED)

    async def publish(self, events: Sequence[JobEvent]) -> None:
        """Announce committed events; a Redis failure is logged, not raised (they are durable)."""
        if not events:
            return
        try:
            await self.redis.publish(self.channel, encode(events))
        except REDIS_UNAVAILABLE as error:
            log.warning("job events not announced: %r", error)
            return
        self._published.inc(len(events))
