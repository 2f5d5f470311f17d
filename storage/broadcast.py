"""Following a Redis pub/sub channel, with the gaps made visible.

Pub/sub delivers a message only to those connected when it is published: a subscriber that
loses its connection misses what was sent meanwhile and is not told. `follow` turns that into
something a cache can act on: every (re)subscription, including the silent reconnects of the
client library (the server confirms each one), calls `on_connect`, after which no message is
missed; a failure calls `on_lost` and retries with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

log = logging.getLogger("backend.broadcast")

MAX_BACKOFF = 5.0
CLOSE_TIMEOUT = 2.0


async def follow(
    redis: Redis,
    channel: str,
    *,
    on_message: Callable[[bytes], None],
    on_connect: Callable[[], Awaitable[None]],
    on_lost: Callable[[], None],
) -> None:
    """Deliver every message of `channel` to `on_message`, until cancelled."""
    delay = 0.05
    while True:
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(channel)
            while True:
                # Blocking reads: no timer per message. A broken connection still ends the
                # read with an error (and the server's restart with a fresh subscription).
                message = await pubsub.get_message(timeout=None)
                if message is None:  # a health-check reply
                    continue
                if message["type"] == "message":
                    on_message(message["data"])
                elif message["type"] == "subscribe":
                    await on_connect()
                    delay = 0.05
        except Exception as error:  # Redis down, or a failing on_connect: start over
            on_lost()
            log.warning("subscription to %s lost: %r; retrying", channel, error)
            await asyncio.sleep(delay)
            delay = min(MAX_BACKOFF, delay * 2)
        finally:
            # Bounded: after the server went away, closing can wait on a dead connection.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await pubsub.aclose()
