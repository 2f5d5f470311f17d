"""The orders actor: placing orders against the stock, following them through their states.

* Placing an order takes the stock and writes the order in one transaction
  (`storage.orders.PLACE`): under any concurrency no order is accepted that the stock could
  not cover, and the database refuses stock below zero whatever happens.
* The orders that arrive while a batch is being placed go together in the next: one
  statement and one commit for all of them (group commit), so under load the database
  spends a round trip, a commit and one set of row locks on many orders, and a hot product
  is locked once per batch rather than once per order. Alone, an order is its own batch.
* With an `Idempotency-Key`, the response is stored in that same transaction and replayed to
  retries with the same request; see `storage.idempotency`.
* Status changes follow `TRANSITIONS`; cancelling or refunding puts the stock back. Every
  change is kept in the order's status history.
* Customers see and cancel their own orders (another's is 404, not 403: its existence is not
  theirs to know); staff (`orders:manage`) see all of them and move them along.
* After each write the catalog is told which products' stock changed (its cache), and the
  caller's read floor is raised (read-your-writes).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import asyncpg
from pydantic import BaseModel, computed_field

from actors import background, pools
from actors.access import permits
from actors.catalog import Catalog, ProductsChanged
from actors.errors import (
    Conflict,
    DomainError,
    FieldError,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    IllegalTransition,
    InvalidInput,
    NotFound,
    OutOfStock,
)
from actors.identity import Principal
from actors.pages import Page, page_of
from actors.runtime import Actor, ActorRef, Message, handler
from actors.sessions import RememberWrite, Sessions
from actors.system import ActorKey
from config import Settings
from observability import metrics
from storage import idempotency, orders
from storage.batching import GroupCommit
from storage.freshness import Written, write_with_position
from storage.postgres import Connection, Database, ReplicaSet

log = logging.getLogger("backend.orders")

OrderStatus = Literal["pending", "paid", "shipped", "delivered", "cancelled", "refunded"]

# Where an order may go from each status. Cancelling (before shipping) and refunding (after
# delivery) put the items back in stock.
TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "pending": frozenset({"paid", "cancelled"}),
    "paid": frozenset({"shipped", "cancelled"}),
    "shipped": frozenset({"delivered"}),
    "delivered": frozenset({"refunded"}),
    "cancelled": frozenset(),
    "refunded": frozenset(),
}
RESTOCKING: Final = frozenset({"cancelled", "refunded"})
MANAGE: Final = "orders:manage"
IDEMPOTENCY_SCOPE: Final = "orders.place"
UPKEEP_INTERVAL = 3600.0


class OrderLine(BaseModel):
    product_id: int
    sku: str
    name: str
    quantity: int
    unit_price_minor: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def line_total_minor(self) -> int:
        return self.quantity * self.unit_price_minor


class StatusChange(BaseModel):
    status: OrderStatus
    at: datetime
    by: int | None
    note: str | None


class Order(BaseModel):
    id: int
    user_id: int
    status: OrderStatus
    total_minor: int
    currency: str
    items: list[OrderLine]
    created_at: datetime
    updated_at: datetime
    history: list[StatusChange] | None = None  # in the detail view

    @classmethod
    def of(cls, row: asyncpg.Record) -> Order:
        return cls.model_validate(dict(row))


@dataclass(frozen=True, slots=True)
class Idempotency:
    key: str
    request_hash: bytes  # of the validated request, so formatting does not matter


@dataclass(frozen=True, slots=True)
class Placed:
    body: bytes  # the order as encoded JSON: the very bytes of the first answer on a replay
    position: int
    replayed: bool


# -- messages --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlaceOrder(Message[Placed]):
    principal: Principal
    lines: tuple[tuple[int, int], ...]  # (product id, quantity), each product once
    idempotency: Idempotency | None = None


@dataclass(frozen=True, slots=True)
class GetOrder(Message[Order]):
    principal: Principal
    order_id: int


@dataclass(frozen=True, slots=True)
class ListOrders(Message[Page[Order]]):
    principal: Principal
    before_id: int | None
    limit: int
    status: str | None = None
    user_id: int | None = None  # staff: one customer's orders


@dataclass(frozen=True, slots=True)
class ChangeStatus(Message[Written[Order]]):
    principal: Principal
    order_id: int
    status: str
    note: str | None = None


@dataclass(frozen=True, slots=True)
class _Outcome:
    body: bytes
    replayed: bool


# -- the actor -------------------------------------------------------------------------------


class Orders(Actor):
    def __init__(
        self,
        settings: Settings,
        replicas: ReplicaSet,
        sessions: ActorRef[Sessions],
        catalog: ActorRef[Catalog],
    ) -> None:
        self.settings = settings
        self.replicas = replicas
        self.sessions = sessions
        self.catalog = catalog
        self._stack = AsyncExitStack()
        self.db: Database
        self._placed = metrics.child(metrics.ORDERS, "placed")
        self._replayed = metrics.child(metrics.ORDERS, "replayed")
        self._together = GroupCommit(self._place_together, name="orders")

    async def on_start(self) -> None:
        s = self.settings
        self.db = await self._stack.enter_async_context(pools.database(s, self.replicas, "orders"))
        upkeep = background.repeat(
            self._forget_old_keys, every=UPKEEP_INTERVAL, name="orders:upkeep", log=log
        )
        self._stack.push_async_callback(background.cancel, upkeep)

    async def on_stop(self) -> None:
        await self._together.close()
        await self._stack.aclose()

    # -- placing ---------------------------------------------------------------------------

    @handler
    async def place(self, message: PlaceOrder) -> Placed:
        outcome = None if message.idempotency else await self._together.submit(message)
        if outcome is None:  # it needs a transaction of its own, or a verdict of its own
            outcome = await self._alone(message)
        position = await self.db.position()
        remember = self.sessions.ask(RememberWrite(message.principal.user_id, position))
        if outcome.replayed:
            self._replayed.inc()
            await remember
        else:
            self._placed.inc()
            product_ids = tuple(product_id for product_id, _ in message.lines)
            await asyncio.gather(self.catalog.ask(ProductsChanged(product_ids, position)), remember)
        return Placed(outcome.body, position, outcome.replayed)

    async def _place_together(self, batch: list[PlaceOrder]) -> list[_Outcome | None]:
        """The orders that arrived while the last batch was being placed, in one statement
        and one commit. An order this refuses (None) is placed again on its own, for an
        exact verdict; so are all of them if one makes the statement fail."""
        if len(batch) == 1:
            return [await self._alone(batch[0])]
        orders_by_user = [(int(m.principal.user_id), m.lines) for m in batch]
        async with self.db.primary() as conn:
            try:
                rows = await orders.place(conn, orders_by_user)
            except asyncpg.PostgresError:
                return [None] * len(batch)
        return [None if row["id"] is None else _Outcome(_body(row), False) for row in rows]

    async def _alone(self, message: PlaceOrder) -> _Outcome:
        try:
            async with self.db.primary() as conn:
                return await self._place(conn, message)
        except asyncpg.UniqueViolationError as error:
            if error.constraint_name != "idempotency_keys_pkey":
                raise
        # Another request with this key got past the lookup at the same moment and committed
        # first; this one rolled back. Now the lookup finds its answer.
        async with self.db.primary() as conn:
            return await self._place(conn, message)

    async def _place(self, conn: Connection, message: PlaceOrder) -> _Outcome:
        key = message.idempotency
        if key is None:
            return await _take_stock(conn, message)  # one statement: atomic by itself
        user_id = int(message.principal.user_id)
        async with conn.transaction():
            if not await idempotency.lock(conn, user_id, IDEMPOTENCY_SCOPE, key.key):
                raise IdempotencyKeyInUse("a request with this Idempotency-Key is in progress")
            stored = await idempotency.lookup(conn, user_id, IDEMPOTENCY_SCOPE, key.key)
            if stored is not None:
                if stored["request_hash"] != key.request_hash:
                    raise IdempotencyKeyReused(
                        "this Idempotency-Key was used for a different request",
                        [FieldError("Idempotency-Key", "already used for a different request")],
                    )
                return _Outcome(stored["response"], replayed=True)
            outcome = await _take_stock(conn, message)
            await idempotency.remember(
                conn,
                user_id,
                IDEMPOTENCY_SCOPE,
                key.key,
                request_hash=key.request_hash,
                status=201,
                response=outcome.body,
            )
            return outcome

    # -- reading ---------------------------------------------------------------------------

    @handler
    async def get_order(self, message: GetOrder) -> Order:
        row = await self.db.read(orders.order, message.order_id)
        if row is None or not _may_see(message.principal, row["user_id"]):
            raise NotFound(f"no order {message.order_id}")
        return Order.of(row)

    @handler
    async def list_orders(self, message: ListOrders) -> Page[Order]:
        principal = message.principal
        user_id = message.user_id if permits(principal.roles, MANAGE) else int(principal.user_id)
        rows = await self.db.read(
            orders.orders_page,
            user_id=user_id,
            status=message.status,
            before_id=message.before_id,
            limit=message.limit + 1,
        )
        return page_of([Order.of(row) for row in rows], message.limit, lambda o: (o.id,))

    # -- status changes --------------------------------------------------------------------

    @handler
    async def change_status(self, message: ChangeStatus) -> Written[Order]:
        (order, restocked), position = await write_with_position(self.db, self._transition, message)
        metrics.ORDERS.labels(message.status).inc()
        if restocked:
            await self.catalog.ask(ProductsChanged(tuple(restocked), position))
        await self.sessions.ask(RememberWrite(message.principal.user_id, position))
        return Written(order, position)

    async def _transition(self, conn: Connection, message: ChangeStatus) -> tuple[Order, list[int]]:
        current = await orders.lock_order(conn, message.order_id)
        if current is None or not _may_see(message.principal, current["user_id"]):
            raise NotFound(f"no order {message.order_id}")
        if message.status not in TRANSITIONS[current["status"]]:
            allowed = ", ".join(sorted(TRANSITIONS[current["status"]])) or "nothing"
            raise IllegalTransition(
                f"a {current['status']} order cannot become {message.status}"
                f" (it may become: {allowed})"
            )
        by = int(message.principal.user_id)
        await orders.set_status(conn, message.order_id, message.status, by, message.note)
        restocked = (
            await orders.restock(conn, message.order_id) if message.status in RESTOCKING else []
        )
        row = await orders.order(conn, message.order_id)
        return Order.of(row), restocked

    async def _forget_old_keys(self) -> None:
        await self.db.write(idempotency.forget_older_than, self.settings.idempotency_key_hours)


def _may_see(principal: Principal, owner_id: int) -> bool:
    return int(principal.user_id) == owner_id or permits(principal.roles, MANAGE)


async def _take_stock(conn: Connection, message: PlaceOrder) -> _Outcome:
    try:
        [row] = await orders.place(conn, [(int(message.principal.user_id), message.lines)])
    except asyncpg.CheckViolationError as error:  # the database's last word on stock >= 0
        if error.constraint_name != "products_stock_nonnegative":
            raise
        raise OutOfStock("not enough stock") from None
    if row["id"] is None:
        raise _refusal(message.lines, row)
    return _Outcome(_body(row), replayed=False)


def _body(row: asyncpg.Record) -> bytes:
    return Order.of(row).model_dump_json(exclude={"history"}).encode()


def _refusal(lines: tuple[tuple[int, int], ...], row: Any) -> DomainError:
    """Why an order was not placed, from what the attempt found (nothing was changed)."""
    found = {product["id"]: product for product in row["found"]}
    unknown = [
        FieldError(f"items.{index}.product_id", f"no product {product_id}")
        for index, (product_id, _) in enumerate(lines)
        if product_id not in found
    ]
    if unknown:
        return InvalidInput("the order names products that do not exist", unknown)
    off_sale = [product_id for product_id, _ in lines if not found[product_id]["active"]]
    if off_sale:
        return Conflict(f"not for sale: products {', '.join(map(str, off_sale))}")
    short = [
        f"product {product_id}: {found[product_id]['stock']} in stock, {quantity} wanted"
        for product_id, quantity in lines
        if found[product_id]["stock"] < quantity
    ]
    if short:
        return OutOfStock("not enough stock: " + "; ".join(short))
    return InvalidInput(
        "the items are priced in different currencies",
        [FieldError("items", "order products of one currency at a time")],
    )


ORDERS = ActorKey[Orders]("orders")
