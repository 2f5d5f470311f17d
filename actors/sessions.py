"""The sessions actor: who is calling, on every authenticated request.

It verifies access tokens, checks them against the deny-list (tokens revoked before their
expiry: logout, a reused refresh token, a role change, a deactivated account), and looks up
the caller's read-your-writes floor, in one Redis round trip. It owns that state in Redis:
the deny-list entries and each user's recent write position (`storage.freshness`). The
lookups of one event-loop tick share one MGET.

Verified tokens are remembered for the rest of their life, so a client that reuses its
token skips the signature check; the deny-list is still consulted on every request.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from actors import pools
from actors.errors import Unauthenticated
from actors.identity import Principal
from actors.runtime import Actor, Message, handler
from actors.system import ActorKey
from actors.tokens import AccessClaims, AccessTokens
from config import Settings
from observability import metrics
from storage.batching import TickBatch
from storage.freshness import WriteFloors, stored_floor
from storage.redis import Keys

VERIFIED_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    principal: Principal
    read_floor: int  # the WAL position this caller's reads must see (0: any)


@dataclass(frozen=True, slots=True)
class Authenticate(Message[Session]):
    token: str


@dataclass(frozen=True, slots=True)
class DenyAccess(Message[None]):
    """Refuse these access tokens until they expire: `(token id, expiry as Unix time)`."""

    tokens: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class RememberWrite(Message[None]):
    """`user_id` just wrote; their reads must see WAL `position` for a short while."""

    user_id: str
    position: int


class Sessions(Actor):
    def __init__(self, settings: Settings, tokens: AccessTokens) -> None:
        self.settings = settings
        self.tokens = tokens
        self.keys = Keys(settings.redis_namespace)
        self._stack = AsyncExitStack()
        self._redis: Redis
        self._floors: WriteFloors
        self._lookups: TickBatch[tuple[str, str], tuple[Any, Any]]
        self._verified: dict[str, AccessClaims] = {}
        self._rejected = metrics.AUTH_EVENTS.labels("rejected")

    async def on_start(self) -> None:
        s = self.settings
        self._redis = await self._stack.enter_async_context(pools.redis(s, "sessions"))
        self._floors = WriteFloors(self._redis, self.keys, s.read_your_writes_seconds)
        self._lookups = TickBatch(self._mget)

    async def on_stop(self) -> None:
        await self._stack.aclose()

    @handler
    async def authenticate(self, message: Authenticate) -> Session:
        try:
            claims = self._verify(message.token)
        except Unauthenticated:
            self._rejected.inc()
            raise
        denied, floor = await self._lookups(
            (self._denied_key(claims.token_id), self._floors.key(claims.user_id))
        )
        if denied is not None:
            self._rejected.inc()
            raise Unauthenticated("token revoked")
        principal = Principal(claims.user_id, claims.roles, claims.token_id)
        return Session(principal, stored_floor(floor))

    @handler
    async def deny(self, message: DenyAccess) -> None:
        now = int(time.time())
        async with self._redis.pipeline(transaction=False) as pipe:
            for token_id, expires_at in message.tokens:
                if expires_at > now:
                    pipe.set(self._denied_key(token_id), b"1", exat=expires_at + 1)
            await pipe.execute()

    @handler
    async def remember_write(self, message: RememberWrite) -> None:
        await self._floors.remember(message.user_id, message.position)

    async def _mget(self, pairs: list[tuple[str, str]]) -> list[tuple[Any, Any]]:
        """One MGET for the lookups of a whole event-loop tick."""
        values = await self._redis.mget([key for pair in pairs for key in pair])
        return list(zip(values[::2], values[1::2], strict=True))

    def _verify(self, token: str) -> AccessClaims:
        claims = self._verified.get(token)
        if claims is None:
            claims = self.tokens.verify(token)
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._evict()
            self._verified[token] = claims
        elif claims.expires_at <= time.time():
            del self._verified[token]
            raise Unauthenticated("token expired")
        return claims

    def _evict(self) -> None:
        """Drop the older half (dicts keep insertion order)."""
        for token in list(self._verified)[: VERIFIED_CACHE_SIZE // 2]:
            del self._verified[token]

    def _denied_key(self, token_id: str) -> str:
        return self.keys("denied", token_id)


SESSIONS = ActorKey[Sessions]("sessions")
