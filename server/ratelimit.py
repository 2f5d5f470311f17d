"""Rate limiting at the door: before any actor does work for a request.

Each request is charged to a token bucket in Redis (`storage.ratelimit`), keyed by policy and
caller: the authenticated user, else the client's IP. The policy is the route's declared one
(`Routes.route(..., rate_limit=...)`), unless `RATE_LIMIT_ROUTES` names another; roles may
multiply it (`RATE_LIMIT_ROLE_MULTIPLIERS`). Answers carry the headers of
draft-ietf-httpapi-ratelimit-headers-11:

    RateLimit-Policy: "default";q=120;w=6
    RateLimit: "default";r=117;t=1

and a refused request gets 429 problem+json with `Retry-After`. When Redis cannot be reached
the policy decides: fail open (serve, count, log once per interval) or closed (503).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from actors.errors import DependencyUnavailable
from config import Settings
from config.settings import EXEMPT, RatePolicy
from observability import metrics
from server.routing import endpoint_of
from server.state import PRINCIPAL
from storage.ratelimit import Buckets, Decision
from storage.redis import REDIS_UNAVAILABLE, Keys, open_redis

log = logging.getLogger("backend.ratelimit")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FAILURE_LOG_INTERVAL = 30.0  # seconds between "Redis is down" warnings while failing open


class RateLimited(Exception):
    """The caller spent its quota: 429, retry after `retry_after` seconds."""

    def __init__(self, policy: str, retry_after: float) -> None:
        super().__init__(f"rate limit {policy!r} exceeded")
        self.detail = f"too many requests for policy {policy!r}; retry after the given delay"
        self.retry_after = max(1, math.ceil(retry_after))


@dataclass(frozen=True, slots=True)
class Quota:
    """What a request was charged against, for its response headers."""

    name: str
    policy: RatePolicy
    decision: Decision
    multiplier: float

    def headers(self) -> dict[str, str]:
        capacity = int(self.policy.capacity * self.multiplier)
        reset = self.decision.reset_after if self.decision.allowed else self.decision.retry_after
        return {
            "RateLimit-Policy": f'"{self.name}";q={capacity};w={self.policy.window_seconds}',
            "RateLimit": f'"{self.name}";r={self.decision.remaining};t={math.ceil(reset)}',
        }


QUOTA = web.RequestKey("quota", Quota)


class RateLimiter:
    """Charges requests to their policy's bucket; owns its Redis client while connected."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._keys = Keys(settings.redis_namespace)
        self._buckets: Buckets | None = None
        self._trusted: tuple[IPNetwork, ...] = tuple(settings.trusted_proxies)
        self._last_failure_log = 0.0

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[None]:
        s = self.settings
        async with open_redis(
            s.redis_dsn, name="ratelimit", size=s.redis_pool_size, timeout=s.rate_limit_timeout
        ) as redis:
            self._buckets = Buckets(redis)
            try:
                yield
            finally:
                self._buckets = None

    def policy_name(self, route_name: str, declared: str) -> str:
        return self.settings.rate_limit_routes.get(route_name, declared)

    async def charge(self, request: web.Request, name: str, identity: str | None = None) -> None:
        """Charge one request to policy `name` for `identity` (default: the caller); raise
        `RateLimited` when it is spent. The charge is kept for the response headers."""
        policy = self.settings.rate_limit_policies[name]
        principal = request.get(PRINCIPAL)
        if identity is None:
            identity = f"u:{principal.user_id}" if principal else f"ip:{self.client_ip(request)}"
        multiplier = 1.0
        if principal is not None:
            factors = self.settings.rate_limit_role_multipliers
            multiplier = max((factors.get(role, 1.0) for role in principal.roles), default=1.0)
        decision = await self._take(name, policy, identity, multiplier)
        if decision is None:
            return
        request[QUOTA] = Quota(name, policy, decision, multiplier)
        if decision.allowed:
            metrics.ratelimit(name, "allowed")
        elif policy.shadow:
            metrics.ratelimit(name, "shadow")
            log.info("shadow limit exceeded", extra={"policy": name, "identity": identity})
        else:
            metrics.ratelimit(name, "limited")
            raise RateLimited(name, decision.retry_after)

    async def _take(
        self, name: str, policy: RatePolicy, identity: str, multiplier: float
    ) -> Decision | None:
        assert self._buckets is not None, "the rate limiter is not connected"
        try:
            return await self._buckets.take(
                self._keys("rl", name, identity),
                capacity=max(1, int(policy.capacity * multiplier)),
                per_second=policy.per_second * multiplier,
                cost=policy.cost,
            )
        except REDIS_UNAVAILABLE as error:
            return self._redis_down(name, policy, error)

    def _redis_down(self, name: str, policy: RatePolicy, error: BaseException) -> None:
        metrics.RATELIMIT_REDIS_ERRORS.inc()
        if policy.on_redis_error == "closed":
            metrics.ratelimit(name, "fail_closed")
            raise DependencyUnavailable("ratelimit", "rate limiting is unavailable") from error
        metrics.ratelimit(name, "fail_open")
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL:
            self._last_failure_log = now
            log.warning(
                "rate limiter cannot reach Redis; failing open", extra={"error": repr(error)}
            )

    def client_ip(self, request: web.Request) -> str:
        """The socket peer, or, when the peer is a trusted proxy, the nearest address in
        X-Forwarded-For that is not one (hops are read from the right, as proxies append)."""
        peer = request.remote or "unknown"
        if not self._trusted or not self._is_trusted(peer):
            return peer
        hops = [
            hop.strip()
            for value in request.headers.getall("X-Forwarded-For", ())
            for hop in value.split(",")
        ]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop if _parse(hop) is not None else peer
            peer = hop
        return peer

    def _is_trusted(self, address: str) -> bool:
        parsed = _parse(address)
        return parsed is not None and any(parsed in network for network in self._trusted)


def account_key(email: str) -> str:
    """The per-account bucket's identity: a digest, so no address is stored in Redis."""
    return "acct:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


def _parse(address: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def rate_limit(limiter: RateLimiter) -> Middleware:
    """Charge every routed request to its policy before its handler runs."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = endpoint_of(request)
        if endpoint is None:  # unmatched routes and CORS preflights: charged to the default
            name = "default"
        else:
            name = limiter.policy_name(endpoint.name, endpoint.rate_limit)
        if name != EXEMPT:
            await limiter.charge(request, name)
        return await handler(request)

    return middleware


def quota_headers() -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """Add the RateLimit headers to every response (429s and other errors included)."""

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        quota = request.get(QUOTA)
        if quota is not None:
            response.headers.update(quota.headers())

    return add


LIMITER = web.AppKey("limiter", RateLimiter)
