"""The Redis token-bucket rate limiter, against real Redis and real server processes."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from prometheus_client import REGISTRY

from actors.identity import Principal
from config import ConfigError, Settings, load_settings
from server.app import create_app
from server.ratelimit import RateLimiter
from server.routing import PUBLIC, Routes, install
from server.state import PRINCIPAL
from storage.embedded import ServiceUrls
from tests.conftest import Stoppable, settings_for
from tests.processes import ROOT, free_port, service_env, wait_until_serving

Factory = Callable[..., Awaitable[TestClient]]

probe = Routes("/probe", tag="probe")


@probe.get("/cheap", access=PUBLIC)
async def cheap(request: web.Request) -> dict[str, str]:
    return {"ok": "yes"}


@probe.get("/strict", access=PUBLIC, rate_limit="strict")
async def strict(request: web.Request) -> dict[str, str]:
    return {"ok": "yes"}


@web.middleware
async def as_user(request: web.Request, handler: Any) -> web.StreamResponse:
    """Stands in for authentication: `X-Test-User: id:role` makes the caller that user."""
    if user := request.headers.get("X-Test-User"):
        user_id, role = user.split(":")
        request[PRINCIPAL] = Principal(user_id, frozenset({role}))
    return await handler(request)


@pytest.fixture
async def limited(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    database: ServiceUrls,
    base_settings: Settings,
) -> Factory:
    async def make(
        policies: dict[str, dict[str, Any]], urls: ServiceUrls | None = None, **overrides: Any
    ) -> TestClient:
        """An app under `policies` on the run's database and Redis, or on `urls`."""
        urls = urls or database
        settings = settings_for(urls, base_settings, rate_limit_policies=policies, **overrides)
        app = await create_app(settings)
        app.middlewares.insert(2, as_user)  # where authentication sits, before the limiter
        install(app, probe)
        return await aiohttp_client(app)

    return make


def decisions(policy: str, decision: str) -> float:
    labels = {"policy": policy, "decision": decision}
    return REGISTRY.get_sample_value("ratelimit_decisions_total", labels) or 0.0


async def test_headers_count_down_then_429_with_retry_after(limited: Factory) -> None:
    client = await limited({"default": {"capacity": 3, "per_second": 0.5}})
    remaining = []
    for _ in range(3):
        response = await client.get("/probe/cheap")
        assert response.status == 200
        assert response.headers["RateLimit-Policy"] == '"default";q=3;w=6'
        remaining.append(response.headers["RateLimit"])
    assert [r.split(";")[1] for r in remaining] == ["r=2", "r=1", "r=0"]

    refused = await client.get("/probe/cheap")
    assert refused.status == 429
    assert refused.content_type == "application/problem+json"
    body = await refused.json()
    assert body["type"] == "/problems/rate-limited"
    assert refused.headers["Retry-After"] == "2"  # one token in 2 s at 0.5/s
    assert refused.headers["RateLimit"] == '"default";r=0;t=2'  # same moment as Retry-After


async def test_health_and_metrics_are_never_limited(limited: Factory) -> None:
    client = await limited({"default": {"capacity": 1, "per_second": 0.01}})
    for path in ["/livez", "/metrics", "/readyz"] * 4:
        response = await client.get(path)
        assert response.status == 200, path
        assert "RateLimit" not in response.headers


async def test_buckets_refill_at_the_configured_rate(limited: Factory) -> None:
    client = await limited({"default": {"capacity": 2, "per_second": 20}})
    statuses = [(await client.get("/probe/cheap")).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    await asyncio.sleep(0.3)  # at 20/s the bucket is full again (capped at 2)
    statuses = [(await client.get("/probe/cheap")).status for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_a_request_may_cost_more_than_one_token(limited: Factory) -> None:
    client = await limited({"default": {"capacity": 5, "per_second": 0.01, "cost": 2}})
    first = await client.get("/probe/cheap")
    assert first.headers["RateLimit"].startswith('"default";r=3;')
    assert (await client.get("/probe/cheap")).status == 200
    third = await client.get("/probe/cheap")  # one token left, two needed
    assert third.status == 429


async def test_each_caller_has_its_own_bucket_and_roles_multiply(limited: Factory) -> None:
    client = await limited({"default": {"capacity": 2, "per_second": 0.01}})
    for user in ("alice:customer", "bob:customer"):
        codes = [
            (await client.get("/probe/cheap", headers={"X-Test-User": user})).status
            for _ in range(3)
        ]
        assert codes == [200, 200, 429], user
    admin = [
        (await client.get("/probe/cheap", headers={"X-Test-User": "root:admin"})).status
        for _ in range(21)
    ]
    assert admin.count(200) == 20  # admins get RATE_LIMIT_ROLE_MULTIPLIERS["admin"] = 10x
    anonymous = await client.get("/probe/cheap")
    assert anonymous.status == 200  # users' buckets are not the IP's


async def test_forwarded_for_is_believed_only_from_trusted_proxies(limited: Factory) -> None:
    policies = {"default": {"capacity": 1, "per_second": 0.01}}
    behind_proxy = await limited(policies, trusted_proxies="127.0.0.1")
    for client_ip in ("203.0.113.5", "203.0.113.6"):
        headers = {"X-Forwarded-For": client_ip}
        assert (await behind_proxy.get("/probe/cheap", headers=headers)).status == 200
        assert (await behind_proxy.get("/probe/cheap", headers=headers)).status == 429

    direct = await limited(policies)  # no trusted proxies: the header is the client's word
    assert (await direct.get("/probe/cheap", headers={"X-Forwarded-For": "1.1.1.1"})).status == 200
    spoofed = await direct.get("/probe/cheap", headers={"X-Forwarded-For": "2.2.2.2"})
    assert spoofed.status == 429


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("198.51.100.1", "203.0.113.9", "198.51.100.1"),  # untrusted peer: header ignored
        ("10.0.0.1", "203.0.113.9", "203.0.113.9"),
        ("10.0.0.1", "1.2.3.4, 203.0.113.9, 10.0.0.2", "203.0.113.9"),  # spoofed leftmost
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),  # all trusted: the farthest
        ("10.0.0.1", "not-an-ip", "10.0.0.1"),
        ("10.0.0.1", None, "10.0.0.1"),
    ],
)
def test_client_ip(peer: str, forwarded: str | None, expected: str) -> None:
    limiter = RateLimiter(load_settings(trusted_proxies="10.0.0.0/8"))
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    transport = _Transport(peer)
    request = make_mocked_request("GET", "/", headers=headers, transport=transport)
    assert limiter.client_ip(request) == expected


class _Transport:
    def __init__(self, peer: str) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default


async def test_shadow_mode_counts_but_never_refuses(limited: Factory) -> None:
    client = await limited({"default": {"capacity": 1, "per_second": 0.01, "shadow": True}})
    before = decisions("default", "shadow")
    statuses = [(await client.get("/probe/cheap")).status for _ in range(4)]
    assert statuses == [200] * 4
    assert decisions("default", "shadow") == before + 3


async def test_redis_down_fails_open_or_closed_as_configured(
    limited: Factory, database: ServiceUrls, stoppable: Stoppable
) -> None:
    client = await limited(
        {
            "default": {"capacity": 10, "per_second": 1},
            "strict": {"capacity": 10, "per_second": 1, "on_redis_error": "closed"},
        },
        urls=replace(database, redis_url=stoppable.urls.redis_url),
    )
    assert (await client.get("/probe/cheap")).status == 200
    opened = decisions("default", "fail_open")
    embedded = stoppable.embedded
    embedded.stop(("redis",))
    try:
        served = await client.get("/probe/cheap")
        assert served.status == 200  # the default keeps the API up
        assert "RateLimit" not in served.headers
        assert decisions("default", "fail_open") == opened + 1
        refused = await client.get("/probe/strict")
        assert refused.status == 503
        assert refused.headers["Retry-After"]
        assert (await refused.json())["type"] == "/problems/dependency-unavailable"
    finally:
        embedded.start(("redis",))
    assert (await client.get("/probe/cheap")).status == 200


async def test_burst_across_two_server_processes_admits_exactly_capacity(
    settings: Settings,
) -> None:
    capacity, burst = 20, 36
    policies = json.dumps({"default": {"capacity": capacity, "per_second": 0.001}})
    ports = [free_port(), free_port()]
    servers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.slow_server",
            cwd=ROOT,
            env=service_env(
                settings,
                PORT=str(port),
                RATE_LIMIT_POLICIES=policies,
                REDIS_NAMESPACE=f"{settings.redis_namespace}-burst",
            ),
        )
        for port in ports
    ]
    try:
        for port, server in zip(ports, servers, strict=True):
            await wait_until_serving(f"http://127.0.0.1:{port}/readyz", server)
        async with aiohttp.ClientSession() as session:

            async def hit(port: int) -> int:
                url = f"http://127.0.0.1:{port}/test/slow?seconds=0"
                async with session.get(url) as response:
                    return response.status

            statuses = await asyncio.gather(*(hit(ports[i % 2]) for i in range(burst)))
        assert statuses.count(200) == capacity
        assert statuses.count(429) == burst - capacity
    finally:
        for server in servers:
            server.terminate()
        await asyncio.gather(*(server.wait() for server in servers))


def test_routes_may_only_name_known_policies() -> None:
    with pytest.raises(ConfigError, match="unknown policies"):
        load_settings(rate_limit_routes={"cheap": "no-such-policy"})
    with pytest.raises(ConfigError, match="RATE_LIMIT_ROLE_MULTIPLIERS"):
        load_settings(rate_limit_role_multipliers={"admin": 0.5})


async def test_hammering_login_gets_429_after_the_burst(limited: Factory) -> None:
    client = await limited({"auth": {"capacity": 3, "per_second": 0.05}})
    attempt = {"email": "nobody@example.com", "password": "wrong-password"}
    statuses = [(await client.post("/api/v1/auth/login", json=attempt)).status for _ in range(3)]
    assert statuses == [401, 401, 401]
    refused = await client.post("/api/v1/auth/login", json=attempt)
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) == 20  # one token at 0.05/s
    assert refused.headers["RateLimit-Policy"] == '"auth";q=3;w=60'


async def test_login_attempts_on_one_account_are_limited_from_anywhere(limited: Factory) -> None:
    client = await limited(
        {"login-account": {"capacity": 2, "per_second": 0.01}}, trusted_proxies="127.0.0.1"
    )

    async def attempt(email: str, source: str) -> int:
        response = await client.post(
            "/api/v1/auth/login",
            json={"email": email, "password": "wrong-password"},
            headers={"X-Forwarded-For": source},
        )
        return response.status

    target = "victim@example.com"
    statuses = [await attempt(target, f"198.51.100.{i}") for i in range(1, 4)]
    assert statuses == [401, 401, 429]  # three addresses, one account
    assert await attempt("TARGET-other@example.com", "198.51.100.9") == 401
    assert await attempt(" Victim@Example.com", "198.51.100.10") == 429  # same account
