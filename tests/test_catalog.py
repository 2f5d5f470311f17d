"""The catalog over HTTP: writes, reads, keyset pages and filters, and a cache that stays
coherent with writes (in this process, across processes, and against racing fills)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from config import Settings
from server.app import create_app
from storage.catalog_cache import CatalogCache
from storage.redis import Keys, open_redis
from tests.conftest import eventually
from tests.people import Caller, sign_up

PRODUCTS = "/api/v1/products"


def sku() -> str:
    return f"SKU-{secrets.token_hex(5)}"


def product_fields(**overrides: Any) -> dict[str, Any]:
    return {
        "sku": sku(),
        "name": f"Mug {secrets.token_hex(4)}",
        "description": "Holds coffee",
        "price_minor": 1299,
        "currency": "EUR",
        "stock": 5,
        **overrides,
    }


async def create(api: TestClient, staff: Caller, **overrides: Any) -> dict[str, Any]:
    response = await api.post(PRODUCTS, json=product_fields(**overrides), headers=staff.headers)
    assert response.status == 201, await response.text()
    return await response.json()


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
async def staff(api: TestClient) -> Caller:
    return await sign_up(api, "staff")


async def test_staff_create_read_update_delete(api: TestClient, staff: Caller) -> None:
    fields = product_fields()
    response = await api.post(PRODUCTS, json=fields, headers=staff.headers)
    assert response.status == 201
    created = await response.json()
    assert {k: created[k] for k in fields} == fields
    assert created["id"] > 0
    assert created["active"] is True
    assert "/" in response.headers["X-Read-After"]

    read = await api.get(f"{PRODUCTS}/{created['id']}")
    assert read.status == 200
    assert await read.json() == created

    again = await api.post(PRODUCTS, json=fields, headers=staff.headers)
    assert again.status == 409

    changed = await api.patch(
        f"{PRODUCTS}/{created['id']}", json={"price_minor": 1500}, headers=staff.headers
    )
    assert changed.status == 200
    assert (await changed.json())["price_minor"] == 1500
    assert (await (await api.get(f"{PRODUCTS}/{created['id']}")).json())["price_minor"] == 1500

    gone = await api.delete(f"{PRODUCTS}/{created['id']}", headers=staff.headers)
    assert gone.status == 204
    assert (await api.get(f"{PRODUCTS}/{created['id']}")).status == 404
    assert (await api.delete(f"{PRODUCTS}/{created['id']}", headers=staff.headers)).status == 404
    reused = await api.post(PRODUCTS, json=fields, headers=staff.headers)
    assert reused.status == 201  # a deleted product's SKU is free again


async def test_unknown_product_is_a_404_problem(api: TestClient) -> None:
    for _ in range(2):  # the second answer comes from the cache, and is the same
        response = await api.get(f"{PRODUCTS}/{2**62}")
        assert response.status == 404
        assert (await response.json())["type"] == "/problems/not-found"
    assert (await api.get(f"{PRODUCTS}/0")).status == 422
    assert (await api.get(f"{PRODUCTS}/abc")).status == 422


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"price_minor": 12.99}, "price_minor"),
        ({"price_minor": "1299"}, "price_minor"),
        ({"price_minor": -1}, "price_minor"),
        ({"stock": -1}, "stock"),
        ({"stock": 2**31}, "stock"),
        ({"currency": "eur"}, "currency"),
        ({"sku": "has space"}, "sku"),
        ({"name": ""}, "name"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_products_are_refused_and_nothing_is_written(
    api: TestClient, staff: Caller, settings: Settings, change: dict, field: str
) -> None:
    fields = product_fields(**change)
    response = await api.post(PRODUCTS, json=fields, headers=staff.headers)
    assert response.status == 422
    assert [e["field"] for e in (await response.json())["errors"]] == [field]
    conn = await asyncpg.connect(settings.primary_dsn)
    try:
        written = await conn.fetchval(
            "SELECT count(*) FROM products WHERE sku = $1 OR name = $2",
            str(fields["sku"]),
            str(fields["name"]),
        )
    finally:
        await conn.close()
    assert written == 0


async def test_bad_changes_are_refused(api: TestClient, staff: Caller) -> None:
    product = await create(api, staff)
    url = f"{PRODUCTS}/{product['id']}"
    for body in ({}, {"stock": None}, {"sku": "NEW-SKU"}, {"stock": -3}):
        response = await api.patch(url, json=body, headers=staff.headers)
        assert response.status == 422, body
    assert await (await api.get(url)).json() == product


async def list_all(
    api: TestClient, headers: dict[str, str] | None = None, **params: Any
) -> list[dict[str, Any]]:
    """Every page of a listing, following the cursors."""
    items: list[dict[str, Any]] = []
    query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
    while True:
        response = await api.get(PRODUCTS, params=query, headers=headers)
        assert response.status == 200, await response.text()
        page = await response.json()
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        query["cursor"] = page["next_cursor"]


async def test_listing_pages_filters_and_sorts(api: TestClient, staff: Caller) -> None:
    tag = secrets.token_hex(4)
    prices = [500, 100, 300, 400, 200]
    made = [
        await create(api, staff, name=f"Lamp {tag} {n}", price_minor=p, stock=n % 2)
        for n, p in enumerate(prices)
    ]
    await create(api, staff, name=f"Lamp {tag} off", active=False)

    newest = await list_all(api, q=tag, limit=2)
    assert [p["id"] for p in newest] == [p["id"] for p in reversed(made)]  # no inactive one

    by_price = await list_all(api, q=tag.upper(), sort="price_asc", limit=2)
    assert [p["price_minor"] for p in by_price] == sorted(prices)
    by_price_desc = await list_all(api, q=tag, sort="price_desc", limit=3)
    assert [p["price_minor"] for p in by_price_desc] == sorted(prices, reverse=True)
    by_name = await list_all(api, q=tag, sort="name_desc", limit=2)
    assert [p["name"] for p in by_name] == sorted((p["name"] for p in made), reverse=True)

    in_range = await list_all(api, q=tag, min_price=200, max_price=400, sort="price_asc")
    assert [p["price_minor"] for p in in_range] == [200, 300, 400]
    in_stock = await list_all(api, q=tag, in_stock=True)
    assert {p["id"] for p in in_stock} == {p["id"] for p in made if p["stock"] > 0}
    assert await list_all(api, q=tag, currency="USD") == []
    assert await list_all(api, q=f"{tag}%") == []  # LIKE wildcards are plain text
    assert await list_all(api, q=f"{tag}_") == []

    forbidden = await api.get(PRODUCTS, params={"q": tag, "include_inactive": "true"})
    assert forbidden.status == 403
    everything = await list_all(api, staff.headers, q=tag, include_inactive=True)
    assert len(everything) == len(made) + 1


async def test_bad_listing_queries_name_the_field(api: TestClient) -> None:
    cases = [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"sort": "random"}, "sort"),
        ({"min_price": "-1"}, "min_price"),
        ({"min_price": "9.5"}, "min_price"),
        ({"min_price": "5", "max_price": "4"}, "max_price"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"colour": "red"}, "colour"),
    ]
    for params, field in cases:
        response = await api.get(PRODUCTS, params=params)
        assert response.status == 422, params
        fields = [e["field"] for e in (await response.json())["errors"]]
        assert fields == [field], params
    page = await (await api.get(PRODUCTS, params={"limit": "1"})).json()
    if page["next_cursor"]:  # a cursor made for one order is refused by another
        other = await api.get(PRODUCTS, params={"cursor": page["next_cursor"], "sort": "price_asc"})
        assert other.status == 422


async def test_writes_invalidate_item_and_listing_caches(api: TestClient, staff: Caller) -> None:
    tag = secrets.token_hex(4)
    product = await create(api, staff, name=f"Chair {tag}", stock=3)
    url = f"{PRODUCTS}/{product['id']}"
    await api.get(url)
    hits = counter("cache_lookups_total", cache="near", result="hit")
    assert (await (await api.get(url)).json())["stock"] == 3
    assert counter("cache_lookups_total", cache="near", result="hit") == hits + 1
    assert [p["stock"] for p in await list_all(api, q=tag)] == [3]

    await api.patch(url, json={"stock": 0, "name": f"Stool {tag}"}, headers=staff.headers)
    assert (await (await api.get(url)).json())["stock"] == 0
    assert [p["name"] for p in await list_all(api, q=tag)] == [f"Stool {tag}"]
    assert await list_all(api, q=tag, in_stock=True) == []


async def test_a_burst_of_misses_makes_one_database_read(api: TestClient, staff: Caller) -> None:
    product = await create(api, staff)
    loads = counter("cache_loads_total", kind="item")
    responses = await asyncio.gather(*(api.get(f"{PRODUCTS}/{product['id']}") for _ in range(50)))
    assert {r.status for r in responses} == {200}
    assert counter("cache_loads_total", kind="item") == loads + 1


@pytest.fixture
async def second_process(settings: Settings) -> AsyncIterator[TestClient]:
    """Another app on the same database and Redis: what a second server process sees."""
    async with TestClient(TestServer(await create_app(settings))) as client:
        yield client


async def test_writes_in_one_process_reach_another_process_cache(
    api: TestClient, second_process: TestClient, staff: Caller
) -> None:
    product = await create(api, staff, price_minor=100)
    url = f"{PRODUCTS}/{product['id']}"
    for _ in range(2):  # cached in the second process, near cache included
        assert (await (await second_process.get(url)).json())["price_minor"] == 100
    await api.patch(url, json={"price_minor": 250}, headers=staff.headers)

    async def updated() -> bool:
        return (await (await second_process.get(url)).json())["price_minor"] == 250

    await eventually(updated, timeout=5)


async def test_a_fill_that_races_a_write_is_not_kept(settings: Settings) -> None:
    """A reader loads old data, a write lands before it stores it: the old data must not
    stay in the cache (the fill's version check refuses it)."""
    keys = Keys(f"race-{secrets.token_hex(4)}")
    async with open_redis(settings.redis_dsn, name="test") as redis:
        cache = CatalogCache(redis, keys, ttl=60, near_ttl=60, near_size=100)
        await cache.start(timeout=5)
        try:
            loading, release = asyncio.Event(), asyncio.Event()
            loads: list[bytes] = []

            async def slow_old_load(floor: int) -> bytes:
                loading.set()
                await release.wait()
                loads.append(b'"old"')
                return b'"old"'

            async def new_load(floor: int) -> bytes:
                assert floor == 0x1234  # reads at least at the write's position
                loads.append(b'"new"')
                return b'"new"'

            reader = asyncio.create_task(cache.item(7, slow_old_load))
            await loading.wait()
            await cache.invalidate([7], position=0x1234)
            release.set()
            assert await reader == b'"old"'  # it asked before the write
            assert await cache.item(7, new_load) == b'"new"'
            assert await cache.item(7, new_load) == b'"new"'  # now cached
            assert loads == [b'"old"', b'"new"']
        finally:
            await cache.stop()
