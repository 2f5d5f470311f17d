"""Orders over HTTP: placing against the stock (never overselling), idempotent retries,
the status machine, who sees what, read-your-writes, and bad input of every kind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from config import Settings
from storage import orders
from storage.postgres import parse_lsn
from tests.conftest import eventually
from tests.people import Caller, sign_up
from tests.test_catalog import create

ORDERS = "/api/v1/orders"


@pytest.fixture(scope="module")
async def staff(api: TestClient) -> Caller:
    return await sign_up(api, "staff")


@pytest.fixture(scope="module")
async def customer(api: TestClient) -> Caller:
    return await sign_up(api)


@pytest.fixture(scope="module")
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(settings.primary_dsn, min_size=1, max_size=2) as pool:
        yield pool


async def order(
    api: TestClient, caller: Caller, *lines: tuple[int, int], headers: dict | None = None
) -> Any:
    items = [{"product_id": p, "quantity": q} for p, q in lines]
    return await api.post(
        ORDERS, json={"items": items}, headers={**caller.headers, **(headers or {})}
    )


async def stock(db: asyncpg.Pool, product_id: int) -> int:
    return await db.fetchval("SELECT stock FROM products WHERE id = $1", product_id)


async def orders_of(db: asyncpg.Pool, user_id: int) -> int:
    return await db.fetchval("SELECT count(*) FROM orders WHERE user_id = $1", user_id)


async def test_an_order_takes_stock_at_the_current_price(
    api: TestClient, staff: Caller, customer: Caller, db: asyncpg.Pool
) -> None:
    mug = await create(api, staff, price_minor=1250, stock=10)
    pen = await create(api, staff, price_minor=199, stock=3)
    response = await order(api, customer, (mug["id"], 2), (pen["id"], 3))
    assert response.status == 201, await response.text()
    placed = await response.json()
    assert placed.keys() >= {"id", "status", "total_minor", "currency", "items"}
    assert placed["status"] == "pending"
    assert placed["total_minor"] == 2 * 1250 + 3 * 199
    assert placed["currency"] == "EUR"
    lines = {item["product_id"]: item for item in placed["items"]}
    assert lines[mug["id"]]["unit_price_minor"] == 1250
    assert lines[pen["id"]]["line_total_minor"] == 597
    assert "/" in response.headers["X-Read-After"]
    assert (await stock(db, mug["id"]), await stock(db, pen["id"])) == (8, 0)
    shown = await (await api.get(f"/api/v1/products/{pen['id']}")).json()
    assert shown["stock"] == 0  # the catalog cache heard of it

    await api.patch(
        f"/api/v1/products/{mug['id']}", json={"price_minor": 9999}, headers=staff.headers
    )
    kept = await (await api.get(f"{ORDERS}/{placed['id']}", headers=customer.headers)).json()
    assert kept["total_minor"] == placed["total_minor"]  # prices were captured


async def test_not_enough_stock_is_409_and_changes_nothing(
    api: TestClient, staff: Caller, db: asyncpg.Pool
) -> None:
    buyer = await sign_up(api)
    plenty = await create(api, staff, stock=100)
    scarce = await create(api, staff, stock=1)
    response = await order(api, buyer, (plenty["id"], 5), (scarce["id"], 2))
    assert response.status == 409
    problem = await response.json()
    assert problem["type"] == "/problems/out-of-stock"
    assert f"product {scarce['id']}: 1 in stock, 2 wanted" in problem["detail"]
    assert (await stock(db, plenty["id"]), await stock(db, scarce["id"])) == (100, 1)
    assert await orders_of(db, buyer.id) == 0


async def test_concurrent_orders_never_oversell(
    api: TestClient, staff: Caller, db: asyncpg.Pool
) -> None:
    product = await create(api, staff, stock=50)
    buyers = [await sign_up(api) for _ in range(4)]
    responses = await asyncio.gather(
        *(order(api, buyers[n % 4], (product["id"], 1)) for n in range(200))
    )
    statuses = Counter(r.status for r in responses)
    assert statuses == {201: 50, 409: 150}
    assert await stock(db, product["id"]) == 0
    sold = await db.fetchval(
        "SELECT sum(quantity) FROM order_items WHERE product_id = $1", product["id"]
    )
    assert sold == 50


async def test_a_batch_judges_its_orders_in_turn_and_places_only_what_stock_covers(
    api: TestClient, staff: Caller, customer: Caller, db: asyncpg.Pool
) -> None:
    mug = await create(api, staff, stock=5, price_minor=1000)
    off = await create(api, staff, stock=5, active=False)
    dollars = await create(api, staff, stock=5, currency="USD")
    unknown = mug["id"] + 10**9
    batch = [
        ((mug["id"], 3),),  # placed: 3 of 5
        ((unknown, 1),),
        ((off["id"], 1),),
        ((mug["id"], 3),),  # 3 + 3 > 5
        ((mug["id"], 1), (dollars["id"], 1)),
        ((mug["id"], 2),),  # 2 are left, but 3 + 3 + 1 + 2 > 5: judged again alone
    ]
    async with db.acquire() as conn:
        rows = await orders.place(conn, [(customer.id, lines) for lines in batch])
    assert [row["id"] is not None for row in rows] == [True, False, False, False, False, False]
    placed, missing, off_sale, short, mixed, after_refusal = rows
    assert placed["total_minor"] == 3000
    assert [item["quantity"] for item in json.loads(placed["items"])] == [3]
    assert json.loads(missing["found"]) == []
    assert json.loads(off_sale["found"]) == [{"id": off["id"], "stock": 5, "active": False}]
    assert json.loads(short["found"]) == [{"id": mug["id"], "stock": 5, "active": True}]
    assert mixed["currencies"] == 2
    assert after_refusal["id"] is None
    assert (await stock(db, mug["id"]), await stock(db, dollars["id"])) == (2, 5)
    followups = await db.fetchval(
        "SELECT count(*) FROM job_outbox WHERE params->>'order_id' = $1", str(placed["id"])
    )
    assert followups == 1


async def test_orders_that_arrive_together_commit_together_with_an_answer_each(
    api: TestClient, staff: Caller, db: asyncpg.Pool
) -> None:
    buyer = await sign_up(api)
    plenty = await create(api, staff, stock=1000)
    responses = await asyncio.gather(*(order(api, buyer, (plenty["id"], 1)) for _ in range(20)))
    assert {r.status for r in responses} == {201}
    commits = await db.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM orders WHERE user_id = $1", buyer.id
    )
    assert commits < 20  # some shared one statement and one commit

    scarce = await create(api, staff, stock=5)
    off = await create(api, staff, stock=5, active=False)
    lines = [((scarce["id"], 3),), ((scarce["id"], 3),), ((scarce["id"], 2),)]
    lines += [((off["id"], 1),), ((scarce["id"] + 10**9, 1),)]
    answers = await asyncio.gather(*(order(api, buyer, *each) for each in lines))
    # Whatever order they were judged in, 3 + 2 fit and one 3 does not.
    assert sorted(r.status for r in answers[:3]) == [201, 201, 409]
    assert [r.status for r in answers[3:]] == [409, 422]
    assert await stock(db, scarce["id"]) == 0
    assert await orders_of(db, buyer.id) == 22


async def test_orders_over_the_same_products_in_any_order_do_not_deadlock(
    api: TestClient, staff: Caller, customer: Caller, db: asyncpg.Pool
) -> None:
    a = await create(api, staff, stock=1000)
    b = await create(api, staff, stock=1000)
    c = await create(api, staff, stock=1000)
    shapes = [((a, 1), (b, 1), (c, 1)), ((c, 1), (b, 1), (a, 1)), ((b, 1), (a, 1))]
    responses = await asyncio.gather(
        *(order(api, customer, *((p["id"], q) for p, q in shapes[n % 3])) for n in range(60))
    )
    assert {r.status for r in responses} == {201}
    assert await stock(db, b["id"]) == 940


async def test_idempotent_retry_replays_the_first_answer(
    api: TestClient, staff: Caller, db: asyncpg.Pool
) -> None:
    buyer = await sign_up(api)
    product = await create(api, staff, stock=10)
    key = {"Idempotency-Key": f"order-{secrets.token_hex(8)}"}
    first = await order(api, buyer, (product["id"], 2), headers=key)
    assert first.status == 201
    assert "Idempotent-Replayed" not in first.headers
    retry = await order(api, buyer, (product["id"], 2), headers=key)
    assert retry.status == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert await retry.read() == await first.read()
    assert await stock(db, product["id"]) == 8
    assert await orders_of(db, buyer.id) == 1

    different = await order(api, buyer, (product["id"], 3), headers=key)
    assert different.status == 422
    assert (await different.json())["type"] == "/problems/idempotency-key-reused"

    someone_else = await sign_up(api)  # keys belong to their user
    theirs = await order(api, someone_else, (product["id"], 1), headers=key)
    assert theirs.status == 201
    assert "Idempotent-Replayed" not in theirs.headers
    assert await stock(db, product["id"]) == 7


async def test_a_retry_while_the_first_runs_is_409(
    api: TestClient, staff: Caller, db: asyncpg.Pool
) -> None:
    buyer = await sign_up(api)
    product = await create(api, staff, stock=10)
    key = f"order-{secrets.token_hex(8)}"
    headers = {"Idempotency-Key": key}
    async with db.acquire() as conn:  # stands in for a first request still running
        lock = """
            SELECT pg_advisory_lock(
                hashtextextended(format('%s:orders.place:%s', $1::bigint, $2::text), 0))
        """
        await conn.execute(lock, buyer.id, key)
        try:
            busy = await order(api, buyer, (product["id"], 1), headers=headers)
        finally:
            await conn.execute("SELECT pg_advisory_unlock_all()")
    assert busy.status == 409
    assert (await busy.json())["type"] == "/problems/idempotency-key-in-use"
    assert "Retry-After" in busy.headers
    assert await stock(db, product["id"]) == 10
    assert (await order(api, buyer, (product["id"], 1), headers=headers)).status == 201

    burst_key = {"Idempotency-Key": f"burst-{secrets.token_hex(8)}"}
    burst = await asyncio.gather(
        *(order(api, buyer, (product["id"], 1), headers=burst_key) for _ in range(10))
    )
    assert {r.status for r in burst} <= {201, 409}
    assert len({await r.read() for r in burst if r.status == 201}) == 1
    assert await stock(db, product["id"]) == 8


async def test_cancel_returns_stock_and_the_status_machine_holds(
    api: TestClient, staff: Caller, db: asyncpg.Pool
) -> None:
    buyer = await sign_up(api)
    product = await create(api, staff, stock=5)
    placed = await (await order(api, buyer, (product["id"], 4))).json()
    url = f"{ORDERS}/{placed['id']}"
    cancelled = await api.post(f"{url}/cancel", headers=buyer.headers)
    assert cancelled.status == 200
    assert (await cancelled.json())["status"] == "cancelled"
    assert await stock(db, product["id"]) == 5
    again = await api.post(f"{url}/cancel", headers=buyer.headers)
    assert again.status == 409
    assert (await again.json())["type"] == "/problems/illegal-transition"
    assert await stock(db, product["id"]) == 5

    second = await (await order(api, buyer, (product["id"], 2))).json()
    url = f"{ORDERS}/{second['id']}"
    for status in ("paid", "shipped", "delivered"):
        moved = await api.post(f"{url}/status", json={"status": status}, headers=staff.headers)
        assert moved.status == 200, await moved.text()
    assert await stock(db, product["id"]) == 3
    back = await api.post(f"{url}/status", json={"status": "paid"}, headers=staff.headers)
    assert back.status == 409
    late = await api.post(f"{url}/cancel", headers=buyer.headers)
    assert late.status == 409
    refunded = await api.post(
        f"{url}/status", json={"status": "refunded", "note": "broken"}, headers=staff.headers
    )
    assert refunded.status == 200
    assert await stock(db, product["id"]) == 5
    fresh = {**buyer.headers, "X-Read-After": refunded.headers["X-Read-After"]}
    detail = await (await api.get(url, headers=fresh)).json()
    history = [(h["status"], h["by"]) for h in detail["history"]]
    assert history == [
        ("pending", buyer.id),
        ("paid", staff.id),
        ("shipped", staff.id),
        ("delivered", staff.id),
        ("refunded", staff.id),
    ]
    assert detail["history"][-1]["note"] == "broken"
    refused = await api.post(f"{url}/status", json={"status": "paid"}, headers=buyer.headers)
    assert refused.status == 403  # customers only cancel


async def test_customers_see_their_own_orders_and_staff_see_all(
    api: TestClient, staff: Caller
) -> None:
    product = await create(api, staff, stock=100)
    alice, bob = await sign_up(api), await sign_up(api)
    mine = [(await (await order(api, alice, (product["id"], 1))).json())["id"] for _ in range(5)]
    placed = await order(api, bob, (product["id"], 1))
    theirs = (await placed.json())["id"]
    # Staff did not write it: they read it fresh by passing its position along.
    fresh = {**staff.headers, "X-Read-After": placed.headers["X-Read-After"]}

    seen, params = [], {"limit": "2"}
    while True:
        page = await (await api.get(ORDERS, params=params, headers=alice.headers)).json()
        seen += [o["id"] for o in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == list(reversed(mine))
    assert (await api.get(f"{ORDERS}/{theirs}", headers=alice.headers)).status == 404
    assert (await api.post(f"{ORDERS}/{theirs}/cancel", headers=alice.headers)).status == 404

    assert (await api.get(f"{ORDERS}/{theirs}", headers=fresh)).status == 200
    bobs = await api.get(ORDERS, params={"user_id": str(bob.id)}, headers=fresh)
    assert [o["id"] for o in (await bobs.json())["items"]] == [theirs]
    ignored = await api.get(ORDERS, params={"user_id": str(bob.id)}, headers=alice.headers)
    assert {o["user_id"] for o in (await ignored.json())["items"]} == {alice.id}
    pending = await api.get(ORDERS, params={"status": "cancelled"}, headers=alice.headers)
    assert (await pending.json())["items"] == []


@contextlib.asynccontextmanager
async def replay_paused(api: TestClient, settings: Settings) -> AsyncIterator[None]:
    """The replica, once caught up (and seen so by the app), stops replaying WAL: what is
    written next is not on it."""
    primary = await asyncpg.connect(settings.primary_dsn)
    replica = await asyncpg.connect(settings.replica_dsns[0])
    try:
        head = parse_lsn(await primary.fetchval("SELECT pg_current_wal_lsn()::text"))

        async def caught_up() -> bool:
            report = await (await api.get("/readyz")).json()
            return parse_lsn(report["checks"]["replicas"][0]["replay_lsn"]) >= head

        await eventually(caught_up)
        await replica.execute("SELECT pg_wal_replay_pause()")
        yield
    finally:
        await replica.execute("SELECT pg_wal_replay_resume()")
        await asyncio.gather(primary.close(), replica.close())


async def test_a_client_reads_its_own_writes_while_the_replica_lags(
    api: TestClient, staff: Caller, settings: Settings
) -> None:
    buyer = await sign_up(api)
    bystander = await sign_up(api, "staff")  # may read every order, writes nothing here
    product = await create(api, staff, stock=5)

    def on_primary() -> float:
        return REGISTRY.get_sample_value("reads_after_write_total", {"target": "primary"}) or 0

    async with replay_paused(api, settings):
        response = await order(api, buyer, (product["id"], 1))
        placed = await response.json()
        url = f"{ORDERS}/{placed['id']}"
        before = on_primary()
        own = await api.get(url, headers=buyer.headers)  # the user's recent-write window
        assert own.status == 200
        assert on_primary() == before + 1
        listed = await (await api.get(ORDERS, headers=buyer.headers)).json()
        assert [o["id"] for o in listed["items"]] == [placed["id"]]

        stale = await api.get(url, headers=bystander.headers)  # from the lagging replica
        assert stale.status == 404
        position = {"X-Read-After": response.headers["X-Read-After"]}
        fresh = await api.get(url, headers={**bystander.headers, **position})
        assert fresh.status == 200


async def test_reads_catch_up_once_the_replica_does(api: TestClient, staff: Caller) -> None:
    buyer = await sign_up(api)
    product = await create(api, staff, stock=5)
    placed = await (await order(api, buyer, (product["id"], 1))).json()

    async def visible() -> bool:
        return (await api.get(f"{ORDERS}/{placed['id']}", headers=staff.headers)).status == 200

    await eventually(visible)


BAD_ORDERS = [
    ({"items": []}, "items"),
    ({"items": [{"product_id": "PID", "quantity": 0}]}, "items.0.quantity"),
    ({"items": [{"product_id": "PID", "quantity": -1}]}, "items.0.quantity"),
    ({"items": [{"product_id": "PID", "quantity": 1.5}]}, "items.0.quantity"),
    ({"items": [{"product_id": "PID", "quantity": "2"}]}, "items.0.quantity"),
    ({"items": [{"product_id": "PID", "quantity": 1001}]}, "items.0.quantity"),
    ({"items": [{"product_id": "1", "quantity": 1}]}, "items.0.product_id"),
    ({"items": [{"product_id": 2**62, "quantity": 1}]}, "items.0.product_id"),
    ({"items": [{"product_id": "PID", "quantity": 1}] * 2}, "items"),
    ({"items": [{"product_id": "PID", "quantity": 1, "price_minor": 1}]}, "items.0.price_minor"),
    ({"items": [{"product_id": "PID", "quantity": 1}], "total_minor": 0}, "total_minor"),
    ({}, "items"),
]


@pytest.mark.parametrize(("body", "field"), BAD_ORDERS)
async def test_bad_orders_are_refused_and_nothing_changes(
    api: TestClient, staff: Caller, db: asyncpg.Pool, body: dict, field: str
) -> None:
    buyer = await sign_up(api)
    product = await create(api, staff, stock=10)
    body = _with_product(body, product["id"])
    response = await api.post(ORDERS, json=body, headers=buyer.headers)
    assert response.status == 422
    assert response.content_type == "application/problem+json"
    assert [e["field"] for e in (await response.json())["errors"]] == [field]
    assert await stock(db, product["id"]) == 10
    assert await orders_of(db, buyer.id) == 0


async def test_bad_requests_of_other_kinds_are_refused(
    api: TestClient, staff: Caller, customer: Caller, db: asyncpg.Pool
) -> None:
    product = await create(api, staff, stock=10)
    before = await orders_of(db, customer.id)
    good = {"items": [{"product_id": product["id"], "quantity": 1}]}
    cases = [
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
        ({"data": b"items=1", "headers": {"Content-Type": "text/plain"}}, 415),
        ({"json": good, "headers": {"Idempotency-Key": "has space"}}, 422),
        ({"json": good, "headers": {"Idempotency-Key": "x" * 256}}, 422),
        ({"json": good, "headers": {"X-Read-After": "yesterday"}}, 422),
        ({"data": b"[" * 2_000_000, "headers": {"Content-Type": "application/json"}}, 413),
    ]
    for kwargs, status in cases:
        headers = {**customer.headers, **kwargs.pop("headers")}
        response = await api.post(ORDERS, headers=headers, **kwargs)
        assert response.status == status, (kwargs.keys(), headers)
        assert response.content_type == "application/problem+json"
    off = await create(api, staff, stock=10, active=False)
    dollars = await create(api, staff, stock=10, currency="USD")
    inactive = await order(api, customer, (off["id"], 1))
    assert inactive.status == 409
    mixed = await order(api, customer, (product["id"], 1), (dollars["id"], 1))
    assert mixed.status == 422
    assert [e["field"] for e in (await mixed.json())["errors"]] == ["items"]
    assert await stock(db, product["id"]) == 10
    assert await stock(db, dollars["id"]) == 10
    assert await orders_of(db, customer.id) == before


def _with_product(body: Any, product_id: int) -> Any:
    if body == "PID":
        return product_id
    if isinstance(body, dict):
        return {k: _with_product(v, product_id) for k, v in body.items()}
    if isinstance(body, list):
        return [_with_product(v, product_id) for v in body]
    return body
