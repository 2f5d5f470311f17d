"""Live job status over WebSocket: the per-process hub and the per-connection protocol.

The hub subscribes once to the job-event channel on Redis (every process that commits events
publishes there), and hands each event to the connections that subscribed to its job, to its
owner's jobs (`mine`) or to its topic (staff). A client subscribing with `since` first gets what
it missed from the event log, merged in `seq` order with what arrived live meanwhile; an
announcement that arrives after the replay that already sent its event is not sent again.

Each connection holds at most `WS_SEND_BUFFER` unsent messages: a client that reads slower than
its jobs change is closed (1013, "try again later": it reconnects with `since` and loses
nothing) instead of making the server buffer without bound. Connections per user are capped
across processes (a Redis sorted set per user whose entries expire unless renewed, so a crashed
process's connections stop counting). Heartbeats (WebSocket pings) close dead connections;
shutdown closes every connection with 1001.

Protocol (JSON text frames):
    -> {"op": "auth", "token": "<access token>"}      first, unless the upgrade had a bearer header
    -> {"op": "subscribe", "jobs": [<id>, ...], "since": <seq>}
    -> {"op": "subscribe", "mine": true, "since": <seq>}
    -> {"op": "subscribe", "topics": ["reports"], "since": <seq>}        staff only
    -> {"op": "unsubscribe", "jobs": [...]} / {"op": "unsubscribe", "mine": true} / topics
    <- {"type": "ready", "user_id": ...}
    <- {"type": "subscribed", "jobs": [...], "mine": bool, "topics": [...], "replayed": n}
    <- {"type": "job", "job_id", "seq", "state", "progress", "message", "topic"}
    <- {"type": "error", "detail": "..."}                            the connection stays open
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
import pydantic
from aiohttp import WSCloseCode, web
from pydantic import Field
from redis.asyncio import Redis

from actors.errors import DomainError
from actors.identity import Principal
from config import Settings
from observability import metrics
from scheduler.broker import JobKeys
from scheduler.events import decode
from scheduler.model import JobEvent
from server.routing import Input
from storage.redis import open_redis

log = logging.getLogger("backend.live")

# A connection not renewed for this many re-check periods stops counting for its user.
CONNECTION_TTL_PERIODS = 3
RECHECK_BATCH = 200
MAX_MESSAGE = 64 * 1024
# Close codes beyond the standard ones, in the application range (4000-4999), after HTTP's.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_TOO_MANY = 4429

# Admit one more connection for a user unless they are at the cap.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

Authenticator = Callable[[str], Awaitable[Principal]]

LIVE = web.AppKey("live", "LiveHub")


# -- client messages -------------------------------------------------------------------------


class Auth(Input):
    op: Literal["auth"]
    token: str = Field(min_length=1, max_length=4096)


class Subscribe(Input):
    op: Literal["subscribe", "unsubscribe"]
    jobs: list[UUID] = Field(default_factory=list, max_length=100)
    mine: bool = False
    topics: list[Annotated[str, Field(max_length=32)]] = Field(default_factory=list, max_length=16)
    since: int | None = Field(None, ge=0)


ClientMessage = pydantic.TypeAdapter(Annotated[Auth | Subscribe, Field(discriminator="op")])


class Refused(Exception):
    """A client message the server answers with an error (the connection stays open)."""


# -- one connection --------------------------------------------------------------------------


class Client:
    """One authenticated connection: what it watches and what it has yet to be sent."""

    __slots__ = (
        "__weakref__",
        "_writer",
        "held",
        "hub",
        "id",
        "jobs",
        "mine",
        "outbox",
        "principal",
        "replayed",
        "replaying",
        "token",
        "topics",
        "ws",
    )

    def __init__(
        self, hub: LiveHub, ws: web.WebSocketResponse, principal: Principal, token: str
    ) -> None:
        self.hub = hub
        self.ws = ws
        self.principal = principal
        self.token = token
        self.id = uuid.uuid4().hex
        self.jobs: set[str] = set()
        self.mine = False
        self.topics: set[str] = set()
        self.outbox: deque[bytes] = deque()
        self.replaying = 0
        self.held: list[JobEvent] = []
        # What the last replay sent: its announcement may still be on its way from Redis.
        self.replayed: frozenset[int] = frozenset()
        self._writer: asyncio.Task[None] | None = None

    def offer(self, event: JobEvent) -> None:
        if self.replaying:
            if len(self.held) >= self.hub.settings.ws_send_buffer:
                self.hub.drop_slow(self)
                return
            self.held.append(event)
            return
        if event.seq not in self.replayed:
            self.send(orjson.dumps(event.wire()))

    def send(self, payload: bytes) -> None:
        if len(self.outbox) >= self.hub.settings.ws_send_buffer:
            self.hub.drop_slow(self)
            return
        self.outbox.append(payload)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        try:
            while self.outbox and not self.ws.closed:
                await self.ws.send_str(self.outbox.popleft().decode())
                self.hub.sent.inc()
        except (ConnectionError, RuntimeError):
            self.outbox.clear()
        finally:
            self._writer = None

    def reply(self, message: dict[str, Any]) -> None:
        self.send(orjson.dumps(message))


# -- the hub ---------------------------------------------------------------------------------


class LiveHub:
    def __init__(self, settings: Settings, authenticate: Authenticator) -> None:
        self.settings = settings
        self.authenticate = authenticate
        self.keys = JobKeys(settings.redis_namespace)
        self.clients: weakref.WeakSet[Client] = weakref.WeakSet()
        self.by_job: dict[str, set[Client]] = {}
        self.by_owner: dict[str, set[Client]] = {}
        self.by_topic: dict[str, set[Client]] = {}
        self.sockets: set[web.WebSocketResponse] = set()
        self.redis: Redis
        self._admit: Any = None
        self._closing: set[asyncio.Task[None]] = set()
        self.sent = metrics.child(metrics.WS_MESSAGES_SENT)
        self.received = metrics.child(metrics.WS_MESSAGES_RECEIVED)
        self.connections = metrics.child(metrics.WS_CONNECTIONS)

    @property
    def ttl(self) -> float:
        return self.settings.ws_recheck_seconds * CONNECTION_TTL_PERIODS

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LiveHub]:
        async with open_redis(self.settings.redis_dsn, name="live", size=8) as redis:
            self.redis = redis
            self._admit = redis.register_script(_ADMIT)
            pubsub = redis.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(self.keys.events)
            tasks = [
                asyncio.create_task(self._fan_out(pubsub), name="live:events"),
                asyncio.create_task(self._renew_forever(), name="live:renew"),
            ]
            try:
                yield self
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _fan_out(self, pubsub: Any) -> None:
        while True:
            try:
                async for message in pubsub.listen():
                    for event in decode(message["data"]):
                        self.route(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job event channel failed; resubscribing")
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    await pubsub.subscribe(self.keys.events)

    def route(self, event: JobEvent) -> None:
        targets = set(self.by_job.get(event.job_id, ()))
        if event.owner_id is not None:
            targets.update(self.by_owner.get(event.owner_id, ()))
        targets.update(self.by_topic.get(event.topic, ()))
        for client in targets:
            client.offer(event)

    # -- connections ------------------------------------------------------------------------

    async def admit(self, client: Client) -> bool:
        key = self.keys.connections(client.principal.user_id)
        now, ttl = time.time(), self.ttl
        cap = self.settings.ws_max_connections_per_user
        admitted = await self._admit([key], [now, cap, now + ttl, client.id, int(ttl) + 1])
        if admitted:
            self.clients.add(client)
            self.connections.inc()
        return bool(admitted)

    async def release(self, client: Client) -> None:
        self.unsubscribe(client, jobs=list(client.jobs), mine=True, topics=list(client.topics))
        if client in self.clients:
            self.clients.discard(client)
            self.connections.dec()
            with contextlib.suppress(Exception):
                await self.redis.zrem(self.keys.connections(client.principal.user_id), client.id)

    async def _renew_forever(self) -> None:
        """Keep this process's connections counted for their users, and their credentials
        current: a connection whose token expired or was revoked (logout) is closed, unless
        the client sent a fresh one (`{"op": "auth"}`) in time."""
        while True:
            await asyncio.sleep(self.settings.ws_recheck_seconds)
            clients = list(self.clients)
            try:
                await self._renew(clients)
            except Exception:
                log.exception("renewing WebSocket connection counts failed")
            for start in range(0, len(clients), RECHECK_BATCH):
                batch = clients[start : start + RECHECK_BATCH]
                await asyncio.gather(*(self._recheck(client) for client in batch))

    async def _renew(self, clients: list[Client]) -> None:
        ttl = self.ttl
        async with self.redis.pipeline(transaction=False) as pipe:
            for client in clients:
                key = self.keys.connections(client.principal.user_id)
                pipe.zadd(key, {client.id: time.time() + ttl}, xx=True)
                pipe.expire(key, int(ttl) + 1)
            await pipe.execute()

    async def _recheck(self, client: Client) -> None:
        try:
            client.principal = await self.authenticate(client.token)
        except DomainError:
            self.drop(client, CLOSE_UNAUTHENTICATED, b"token expired or revoked", "unauthenticated")
        except Exception:
            log.exception("re-checking a WebSocket's token failed")

    def drop_slow(self, client: Client) -> None:
        """Close a client that does not keep up (it may reconnect with `since`)."""
        self.drop(client, WSCloseCode.TRY_AGAIN_LATER, b"too slow: reconnect with since", "slow")

    def drop(self, client: Client, code: int, message: bytes, reason: str) -> None:
        if client.ws.closed:
            return
        metrics.WS_CLOSED.labels(reason).inc()
        client.outbox.clear()
        client.held.clear()
        closing = asyncio.create_task(client.ws.close(code=code, message=message))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def close_all(self) -> None:
        """Shutdown: every socket gets 1001 (going away)."""
        sockets = list(self.sockets)
        for _ws in sockets:
            metrics.WS_CLOSED.labels("shutdown").inc()
        await asyncio.gather(
            *(
                ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
                for ws in sockets
            ),
            return_exceptions=True,
        )

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(
        self, client: Client, *, jobs: Iterable[str], mine: bool, topics: Iterable[str]
    ) -> None:
        for job_id in jobs:
            client.jobs.add(job_id)
            self.by_job.setdefault(job_id, set()).add(client)
        if mine:
            client.mine = True
            self.by_owner.setdefault(client.principal.user_id, set()).add(client)
        for topic in topics:
            client.topics.add(topic)
            self.by_topic.setdefault(topic, set()).add(client)

    def unsubscribe(
        self, client: Client, *, jobs: Iterable[str], mine: bool, topics: Iterable[str]
    ) -> None:
        for job_id in jobs:
            client.jobs.discard(job_id)
            _remove(self.by_job, job_id, client)
        if mine and client.mine:
            client.mine = False
            _remove(self.by_owner, client.principal.user_id, client)
        for topic in topics:
            client.topics.discard(topic)
            _remove(self.by_topic, topic, client)


def _remove(index: dict[str, set[Client]], key: str, client: Client) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(client)
        if not members:
            del index[key]
