"""Orders over HTTP: place (idempotently), read, list, cancel; staff move them along."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated

from aiohttp import web
from pydantic import Field, field_validator

from actors.errors import FieldError, InvalidInput
from actors.orders import (
    ORDERS,
    ChangeStatus,
    GetOrder,
    Idempotency,
    ListOrders,
    Order,
    OrderStatus,
    PlaceOrder,
)
from actors.pages import Page, decode_cursor, integer
from server.fields import Cursor, Id, Limit, StrictId
from server.freshness import READ_AFTER, written
from server.routing import Input, Reply, Routes
from server.state import ACTORS, PRINCIPAL
from storage.freshness import HEADER, header_value

routes = Routes("/api/v1", tag="orders")

IDEMPOTENCY_KEY = "Idempotency-Key"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as for any token

Quantity = Annotated[int, Field(strict=True, ge=1, le=1000)]


class OrderLineRequest(Input):
    product_id: StrictId
    quantity: Quantity


class NewOrder(Input):
    items: Annotated[list[OrderLineRequest], Field(min_length=1, max_length=50)]

    @field_validator("items")
    @classmethod
    def _each_product_once(cls, items: list[OrderLineRequest]) -> list[OrderLineRequest]:
        if len({item.product_id for item in items}) != len(items):
            raise ValueError("name each product once (with its whole quantity)")
        return items


class OrderQuery(Input):
    status: OrderStatus | None = None
    user_id: Id | None = None
    cursor: Cursor | None = None
    limit: Limit = 20


class StatusRequest(Input):
    status: OrderStatus
    note: Annotated[str, Field(max_length=500)] | None = None


@routes.post(
    "/orders",
    access="orders:place",
    status=201,
    headers={IDEMPOTENCY_KEY: "Makes retries safe: the same key and body get the first answer"},
    response_headers={
        **READ_AFTER,
        "Idempotent-Replayed": "`true` when this is the stored answer to an earlier request",
    },
    errors={
        409: "Not enough stock (`out-of-stock`), a product not for sale, or a request with "
        "the same Idempotency-Key still running (`idempotency-key-in-use`)",
        422: "Invalid input, an unknown product, mixed currencies, or an Idempotency-Key "
        "used for another request (`idempotency-key-reused`)",
    },
)
async def place_order(request: web.Request, body: NewOrder) -> Reply[Order]:
    """Place an order: its stock is taken and the order written in one transaction; not
    enough stock is 409 and changes nothing. With an `Idempotency-Key` header, a retry of
    the same request returns the first answer (`Idempotent-Replayed: true`), another request
    with that key is 422, and a retry while the first is still running is 409."""
    placed = await request.app[ACTORS][ORDERS].ask(
        PlaceOrder(
            request[PRINCIPAL],
            tuple((line.product_id, line.quantity) for line in body.items),
            _idempotency(request, body),
        )
    )
    headers = {HEADER: header_value(placed.position)}
    if placed.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Reply(placed.body, headers)


@routes.get("/orders", access="orders:place")
async def list_orders(request: web.Request, query: OrderQuery) -> Page[Order]:
    """The caller's orders, newest first (staff: everyone's, or one `user_id`'s), a page at
    a time: follow `next_cursor`."""
    before = decode_cursor(query.cursor, (integer,))[0] if query.cursor else None
    return await request.app[ACTORS][ORDERS].ask(
        ListOrders(request[PRINCIPAL], before, query.limit, query.status, query.user_id)
    )


@routes.get("/orders/{order_id}", access="orders:place")
async def get_order(request: web.Request, order_id: Id) -> Order:
    """One order with its items and status history (another customer's is 404)."""
    return await request.app[ACTORS][ORDERS].ask(GetOrder(request[PRINCIPAL], order_id))


@routes.post(
    "/orders/{order_id}/cancel",
    access="orders:place",
    response_headers=READ_AFTER,
    errors={409: "Too late to cancel (`illegal-transition`)"},
)
async def cancel_order(request: web.Request, order_id: Id) -> Reply[Order]:
    """Cancel an order before it ships; its stock goes back. Too late is 409."""
    change = ChangeStatus(request[PRINCIPAL], order_id, "cancelled")
    return written(await request.app[ACTORS][ORDERS].ask(change))


@routes.post(
    "/orders/{order_id}/status",
    access="orders:manage",
    response_headers=READ_AFTER,
    errors={409: "Not a move the status machine allows (`illegal-transition`)"},
)
async def change_status(request: web.Request, order_id: Id, body: StatusRequest) -> Reply[Order]:
    """Move an order along: pending -> paid -> shipped -> delivered; cancelled from pending
    or paid, refunded after delivery (both return the stock). Any other move is 409."""
    change = ChangeStatus(request[PRINCIPAL], order_id, body.status, body.note)
    return written(await request.app[ACTORS][ORDERS].ask(change))


def _idempotency(request: web.Request, body: NewOrder) -> Idempotency | None:
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is None:
        return None
    if not _KEY.match(key):
        raise InvalidInput(
            f"bad {IDEMPOTENCY_KEY} header",
            [FieldError(IDEMPOTENCY_KEY, "1 to 255 visible ASCII characters")],
        )
    return Idempotency(key, hashlib.sha256(body.model_dump_json().encode()).digest())
