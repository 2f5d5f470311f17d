"""Rows for the commerce API, each beside a bare-aiohttp ceiling doing the same raw work:

* `GET /api/v1/products/{id}` (cached) against one raw Redis GET of the same JSON;
* `GET /api/v1/products` (the first page) against one raw asyncpg primary-key SELECT;
* `POST /api/v1/orders` (authenticated, one item out of 1,000 products) against the same
  order transaction (`storage.orders.PLACE`) in raw asyncpg;
* the same orders all for one product, against the spread-out run.

The server runs as it ships except that its rate-limit policy admits everything (the limiter's
own cost is the rate limiter's row); the data is seeded here.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.request
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis

from bench.harness import Request, Row, counting_errors
from bench.run import Bench
from storage.redis import Keys

UNLIMITED_POLICY = json.dumps({"default": {"capacity": 10**9, "per_second": 10**9}})
PRODUCTS = 1000
READ_IDS = 100
STOCK = 1_000_000_000
P99_TARGET_MS = 50.0


@dataclass(frozen=True)
class Fixture:
    customer_id: int
    token: str
    product_ids: list[int]
    hot_id: int


def rows(bench: Bench) -> list[Row]:
    product_ids = asyncio.run(_products(bench.settings.primary_dsn))
    _forget_cached_catalog(bench)
    with bench.variant(RATE_LIMIT_POLICIES=UNLIMITED_POLICY) as server:
        data = enroll(bench, server, product_ids)
        return [*_reads(bench, server, data), *_orders(bench, server, data)]


def cached_product_reads(bench: Bench) -> Request:
    """`GET /api/v1/products/{id}` over the first seeded products in turn, served from the
    catalog's cache once warm: the hot route other suites measure their cost on."""
    ids = asyncio.run(_products(bench.settings.primary_dsn))[:READ_IDS]
    return Request("", lua=_rotating("/api/v1/products/", ids))


def _reads(bench: Bench, server: str, data: Fixture) -> list[Row]:
    ids = data.product_ids[:READ_IDS]
    found = []
    for connections in bench.connections:
        found.append(
            _noted(
                bench.measure(
                    "GET /products/{id} cached vs raw Redis GET",
                    Request("", lua=_rotating("/api/v1/products/", ids)),
                    ceiling=Request("", lua=_rotating("/redis/", ids)),
                    connections=connections,
                    target=0.7,
                    server=server,
                )
            )
        )
    for connections in bench.connections:
        found.append(
            _noted(
                bench.measure(
                    "GET /products first page vs raw PK SELECT",
                    Request("/api/v1/products"),
                    ceiling=Request("", lua=_rotating("/pk/", ids)),
                    connections=connections,
                    target=0.6,
                    server=server,
                )
            )
        )
    return found


def _orders(bench: Bench, server: str, data: Fixture) -> list[Row]:
    auth = f'wrk.headers["Authorization"] = "Bearer {data.token}"'
    spread = Request("", lua=_ordering("/api/v1/orders", data.product_ids, auth))
    hot = Request("", lua=_ordering("/api/v1/orders", [data.hot_id], auth))
    ceiling = Request("", lua=_ordering(f"/order?user={data.customer_id}", data.product_ids, ""))
    found = []
    for connections in bench.connections:
        found.append(
            _noted(
                bench.measure(
                    "POST /orders vs raw order transaction",
                    spread,
                    ceiling=ceiling,
                    connections=connections,
                    target=0.7,
                    server=server,
                )
            )
        )
        found.append(
            _noted(
                bench.measure(
                    "POST /orders one hot product vs spread out",
                    hot,
                    ceiling=spread,
                    connections=connections,
                    target=0.5,
                    server=server,
                    ceiling_server=server,
                )
            )
        )
    return found


def _noted(row: Row) -> Row:
    """At 64 connections the p99 has a target of its own."""
    if row.connections == 64:
        verdict = "ok" if row.load.p99_ms < P99_TARGET_MS else "ABOVE TARGET"
        print(f"{'':<44} p99 {row.load.p99_ms:.1f} ms (target < {P99_TARGET_MS:g} ms): {verdict}")
    return row


# -- wrk scripts -----------------------------------------------------------------------------


def _rotating(prefix: str, ids: list[int]) -> str:
    """GET `prefix + id`, taking the ids in turn."""
    return counting_errors(
        f"""
local ids = {{{",".join(map(str, ids))}}}
local n = 0
request = function()
  n = n % #ids + 1
  return wrk.format("GET", "{prefix}" .. ids[n])
end
"""
    )


def _ordering(path: str, ids: list[int], headers: str) -> str:
    """POST an order for one unit of a random product among `ids`."""
    return counting_errors(
        f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{headers}
local ids = {{{",".join(map(str, ids))}}}
request = function()
  local body = '{{"items":[{{"product_id":' .. ids[math.random(#ids)] .. ',"quantity":1}}]}}'
  return wrk.format(nil, "{path}", nil, body)
end
"""
    )


# -- data ------------------------------------------------------------------------------------


def enroll(bench: Bench, server: str, product_ids: list[int]) -> Fixture:
    """A customer, warm caches, and the ceiling's Redis copy of the product JSON."""
    email, password = f"bench-{secrets.token_hex(6)}@example.com", secrets.token_urlsafe(16)
    account = {"email": email, "password": password, "name": "Bench"}
    user = _post(server, "/api/v1/auth/register", account)
    tokens = _post(server, "/api/v1/auth/login", {"email": email, "password": password})
    client = redis.Redis.from_url(bench.settings.redis_dsn)
    try:
        for product_id in product_ids[1 : READ_IDS + 1]:
            for _ in range(4):  # reach both processes' near caches
                body = _get(server, f"/api/v1/products/{product_id}")
            client.set(f"bench:product:{product_id}", body)
    finally:
        client.close()
    return Fixture(user["id"], tokens["access_token"], product_ids[1:], product_ids[0])


async def _products(dsn: str) -> list[int]:
    """A thousand products to spread orders over, and the hot one first."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO products (sku, name, description, price_minor, currency, stock)
            SELECT 'BENCH-' || n, 'Bench product ' || n, 'Seeded for the benchmark',
                   100 + n, 'EUR', $1
            FROM generate_series(0, $2) AS n
            WHERE NOT EXISTS (
                SELECT 1 FROM products WHERE sku = 'BENCH-' || n AND deleted_at IS NULL
            )
            """,
            STOCK,
            PRODUCTS,
        )
        await conn.execute(
            "UPDATE products SET stock = $1, active = true WHERE sku LIKE 'BENCH-%'", STOCK
        )
        rows = await conn.fetch(
            "SELECT id FROM products WHERE sku LIKE 'BENCH-%' AND deleted_at IS NULL "
            "ORDER BY (substr(sku, 7))::int"
        )
    finally:
        await conn.close()
    return [row["id"] for row in rows]


def _forget_cached_catalog(bench: Bench) -> None:
    """Seeding bypassed the service: drop what an earlier run left in its catalog cache."""
    client = redis.Redis.from_url(bench.settings.redis_dsn)
    try:
        pattern = Keys(bench.settings.redis_namespace)("catalog", "*")
        for key in client.scan_iter(match=pattern, count=1000):
            client.delete(key)
    finally:
        client.close()


def _post(server: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        server + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _get(server: str, path: str) -> bytes:
    with urllib.request.urlopen(server + path, timeout=10) as response:
        return response.read()
