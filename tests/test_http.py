"""What a client sees over HTTP: health, readiness, headers, CORS, errors, validation, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import Field

from actors.errors import Conflict, Overloaded
from config import Settings
from server.app import create_app
from server.routing import PUBLIC, Input, Routes, install

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]

HELMET_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-DNS-Prefetch-Control": "off",
    "X-Permitted-Cross-Domain-Policies": "none",
    "X-XSS-Protection": "0",
    "Origin-Agent-Cluster": "?1",
}


async def test_livez(client: TestClient) -> None:
    response = await client.get("/livez")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_reports_every_dependency_up(client: TestClient) -> None:
    response = await client.get("/readyz")
    body = await response.json()
    assert response.status == 200, body
    assert body["status"] == "ready"
    assert body["checks"]["primary"]["up"] is True
    assert body["checks"]["redis"]["up"] is True
    [replica] = body["checks"]["replicas"]
    assert replica["up"] is True
    assert replica["lag_seconds"] < 1  # at most a moment behind the latest write
    assert body["reads"] == "replica"


@pytest.mark.parametrize("path", ["/livez", "/no-such-route"])
async def test_security_headers_on_every_response(client: TestClient, path: str) -> None:
    response = await client.get(path)
    for name, value in HELMET_HEADERS.items():
        assert response.headers[name] == value
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    assert "aiohttp" not in response.headers.get("Server", "")


async def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    echoed = await client.get("/livez", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["X-Request-ID"] == "abc-123"
    generated = await client.get("/livez")
    assert len(generated.headers["X-Request-ID"]) == 32
    hostile = await client.get("/livez", headers={"X-Request-ID": 'x" injected=1 ' * 3})
    assert hostile.headers["X-Request-ID"] != 'x" injected=1 ' * 3


async def test_cors_allows_only_configured_origins(client: TestClient, settings: Settings) -> None:
    [allowed] = settings.cors_origins
    preflight = {"Access-Control-Request-Method": "GET"}
    ok = await client.options("/livez", headers={"Origin": allowed, **preflight})
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == allowed
    refused = await client.options("/livez", headers={"Origin": "https://evil.test", **preflight})
    assert refused.status == 403
    assert "Access-Control-Allow-Origin" not in refused.headers
    simple = await client.get("/livez", headers={"Origin": allowed})
    assert simple.headers["Access-Control-Allow-Origin"] == allowed
    assert "X-Request-ID" in simple.headers["Access-Control-Expose-Headers"]


async def test_unknown_route_and_wrong_method_are_problems(client: TestClient) -> None:
    missing = await client.get("/no-such-route")
    assert missing.status == 404
    assert missing.content_type == "application/problem+json"
    body = await missing.json()
    assert body["status"] == 404
    assert body["type"] == "/problems/not-found"
    assert {"title", "detail"} <= body.keys()

    wrong = await client.post("/livez")
    assert wrong.status == 405
    assert "GET" in wrong.headers["Allow"].split(",")
    assert (await wrong.json())["status"] == 405


async def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    await client.get("/livez")
    await client.get("/no-such-route/raw-path-marker")
    text = await (await client.get("/metrics")).text()
    assert 'http_requests_total{method="GET",route="/livez",status="200"}' in text
    assert 'route="unmatched",status="404"' in text
    assert "raw-path-marker" not in text  # raw paths never become labels
    assert 'http_request_duration_seconds_bucket{le="0.001",method="GET",route="/livez"}' in text
    for name in (
        "actor_mailbox_depth",
        "actor_in_progress",
        "actor_messages_total",
        "actor_message_duration_seconds",
        "db_replica_up",
    ):
        assert f"{name}" in text
    assert 'actor_messages_total{actor="health",outcome="processed"}' in text


# -- the routing layer: validation, limits, failures -------------------------------------


class Order(Input):
    sku: Annotated[str, Field(min_length=1, max_length=32)]
    quantity: Annotated[int, Field(gt=0, le=100)]


class Page(Input):
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    tags: list[str] = []


probe_routes = Routes("/probe", tag="probe")
received: list[object] = []


@probe_routes.post("/orders/{shop_id}", access=PUBLIC, status=201)
async def create(request: web.Request, shop_id: Annotated[int, Field(gt=0)], body: Order) -> dict:
    received.append(body)
    return {"shop": shop_id, "sku": body.sku, "quantity": body.quantity}


@probe_routes.get("/items", access=PUBLIC)
async def items(request: web.Request, query: Page) -> dict:
    return {"limit": query.limit, "tags": query.tags}


@probe_routes.get("/slow", access=PUBLIC)
async def slow(request: web.Request) -> dict:
    await asyncio.sleep(30)
    return {}


@probe_routes.get("/busy", access=PUBLIC)
async def busy(request: web.Request) -> dict:
    raise Overloaded("catalog", "mailbox full (256)")


@probe_routes.get("/clash", access=PUBLIC)
async def clash(request: web.Request) -> dict:
    raise Conflict("sku already exists")


@probe_routes.get("/bug", access=PUBLIC)
async def bug(request: web.Request) -> dict:
    raise KeyError("secret internals")


@pytest.fixture
async def probe(aiohttp_client: ClientFactory, settings: Settings) -> TestClient:
    app = await create_app(settings.model_copy(update={"request_timeout": 0.2}))
    install(app, probe_routes)
    return await aiohttp_client(app)


async def test_valid_body_is_accepted(probe: TestClient) -> None:
    response = await probe.post("/probe/orders/7", json={"sku": "A-1", "quantity": 2})
    assert response.status == 201
    assert await response.json() == {"shop": 7, "sku": "A-1", "quantity": 2}


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({"sku": "", "quantity": 0}, {"sku", "quantity"}),
        ({"sku": "A-1"}, {"quantity"}),
        ({"sku": "A-1", "quantity": "many"}, {"quantity"}),
        ({"sku": "A-1", "quantity": 1, "admin": True}, {"admin"}),
        ([1, 2], {"body"}),
    ],
)
async def test_bad_body_names_each_bad_field_and_changes_nothing(
    probe: TestClient, payload: object, fields: set[str]
) -> None:
    received.clear()
    response = await probe.post("/probe/orders/7", json=payload)
    assert response.status == 422
    assert response.content_type == "application/problem+json"
    body = await response.json()
    assert {e["field"] for e in body["errors"]} == fields
    assert all(e["message"] for e in body["errors"])
    assert received == []


async def test_malformed_json_and_wrong_type_are_refused(probe: TestClient) -> None:
    malformed = await probe.post(
        "/probe/orders/7", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert malformed.status == 400
    assert (await malformed.json())["type"] == "/problems/malformed-json"
    form = await probe.post("/probe/orders/7", data={"sku": "A-1", "quantity": "1"})
    assert form.status == 415


async def test_bad_path_and_query_parameters_are_named(probe: TestClient) -> None:
    path = await probe.post("/probe/orders/zero", json={"sku": "A-1", "quantity": 1})
    assert path.status == 422
    assert [e["field"] for e in (await path.json())["errors"]] == ["shop_id"]
    query = await probe.get("/probe/items", params={"limit": "1000", "other": "x"})
    assert query.status == 422
    assert {e["field"] for e in (await query.json())["errors"]} == {"limit", "other"}
    ok = await probe.get("/probe/items?limit=5&tags=a&tags=b")
    assert await ok.json() == {"limit": 5, "tags": ["a", "b"]}


async def test_oversized_body_is_refused_before_reading(probe: TestClient, settings: Settings):
    response = await probe.post(
        "/probe/orders/7",
        data=b"x" * (settings.max_body_bytes + 1),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 413
    assert (await response.json())["status"] == 413


async def test_request_past_its_deadline_gets_504(probe: TestClient) -> None:
    response = await probe.get("/probe/slow")
    assert response.status == 504
    assert (await response.json())["type"] == "/problems/deadline-exceeded"


async def test_overload_is_503_with_retry_after(probe: TestClient, settings: Settings) -> None:
    response = await probe.get("/probe/busy")
    assert response.status == 503
    assert response.headers["Retry-After"] == str(settings.retry_after_seconds)
    assert (await response.json())["type"] == "/problems/overloaded"


async def test_domain_error_maps_to_its_status(probe: TestClient) -> None:
    response = await probe.get("/probe/clash")
    assert response.status == 409
    assert (await response.json())["detail"] == "sku already exists"


async def test_unexpected_error_is_500_without_internals(probe: TestClient) -> None:
    response = await probe.get("/probe/bug", headers={"X-Request-ID": "trace-me"})
    assert response.status == 500
    body = await response.json()
    assert "secret internals" not in await response.text()
    assert "Traceback" not in await response.text()
    assert body["request_id"] == "trace-me"


def test_route_declarations_must_match_the_path() -> None:
    routes = Routes()
    with pytest.raises(TypeError, match="do not match"):

        @routes.get("/things/{thing_id}", access=PUBLIC)
        async def wrong(request: web.Request, other_id: int) -> dict:
            return {}
