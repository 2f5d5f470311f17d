"""The catalog actor: products, read through a coherent two-level cache.

Reads come from a replica through `storage.catalog_cache` (near cache, then Redis, then the
database, single-flight), answered as encoded JSON. Writes go to the primary with an audit
entry in the same transaction, then retire what every process has cached of them before the
writer gets its answer. Other actors that change products (an order taking stock) tell the
catalog with `ProductsChanged`.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import asyncpg
from pydantic import BaseModel

from actors import pools
from actors.errors import Conflict, NotFound
from actors.identity import Principal
from actors.pages import page_of
from actors.runtime import Actor, ActorRef, Message, handler
from actors.sessions import RememberWrite, Sessions
from actors.system import ActorKey
from config import Settings
from observability.logging import request_id
from storage import audit, catalog
from storage.catalog_cache import TOMBSTONE, CatalogCache
from storage.freshness import Written, reading_after, write_with_position
from storage.postgres import Connection, Database, ReplicaSet, read_floor
from storage.redis import Keys


class Product(BaseModel):
    id: int
    sku: str
    name: str
    description: str
    price_minor: int
    currency: str
    stock: int
    active: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: asyncpg.Record) -> Product:
        return cls(**dict(row))


@dataclass(frozen=True, slots=True)
class Listing:
    """A product query: what to match, in which order, from where, how many."""

    filters: catalog.Filters
    sort: str
    after: tuple[Any, int] | None
    limit: int
    key: str  # the query's canonical text, its cache key


# -- messages --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GetProduct(Message[bytes]):
    """The product as encoded JSON."""

    product_id: int


@dataclass(frozen=True, slots=True)
class ListProducts(Message[bytes]):
    """A page of products as encoded JSON (`{"items", "next_cursor"}`)."""

    listing: Listing


@dataclass(frozen=True, slots=True)
class CreateProduct(Message[Written[Product]]):
    by: Principal
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UpdateProduct(Message[Written[Product]]):
    by: Principal
    product_id: int
    changes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeleteProduct(Message[Written[None]]):
    by: Principal
    product_id: int


@dataclass(frozen=True, slots=True)
class ProductsChanged(Message[None]):
    """Products changed by another actor's transaction, committed at WAL `position`."""

    product_ids: tuple[int, ...]
    position: int


# -- the actor -------------------------------------------------------------------------------


class Catalog(Actor):
    def __init__(self, settings: Settings, replicas: ReplicaSet, sessions: ActorRef[Sessions]):
        self.settings = settings
        self.replicas = replicas
        self.sessions = sessions
        self._stack = AsyncExitStack()
        self.db: Database
        self.cache: CatalogCache

    async def on_start(self) -> None:
        s = self.settings
        self.db = await self._stack.enter_async_context(pools.database(s, self.replicas, "catalog"))
        redis = await self._stack.enter_async_context(pools.redis(s, "catalog"))
        self.cache = CatalogCache(
            redis,
            Keys(s.redis_namespace),
            ttl=s.catalog_cache_seconds,
            near_ttl=s.catalog_near_cache_seconds,
            near_size=s.catalog_near_cache_size,
        )
        await self.cache.start(timeout=s.db_connect_timeout)
        self._stack.push_async_callback(self.cache.stop)

    async def on_stop(self) -> None:
        await self._stack.aclose()

    # -- reads -----------------------------------------------------------------------------

    @handler
    async def get_product(self, message: GetProduct) -> bytes:
        load = partial(self._load_product, message.product_id)
        body = await self.cache.item(message.product_id, load, read_floor.get())
        if body == TOMBSTONE:
            raise NotFound(f"no product {message.product_id}")
        return body

    @handler
    async def list_products(self, message: ListProducts) -> bytes:
        listing = message.listing
        return await self.cache.listing(
            listing.key, partial(self._load_listing, listing), read_floor.get()
        )

    async def _load_product(self, product_id: int, floor: int) -> bytes:
        with reading_after(floor):
            row = await self.db.read(catalog.product, product_id)
        return TOMBSTONE if row is None else Product.of(row).model_dump_json().encode()

    async def _load_listing(self, listing: Listing, floor: int) -> bytes:
        sort = catalog.SORTS[listing.sort]
        with reading_after(floor):
            rows = await self.db.read(
                catalog.products_page, listing.filters, sort, listing.after, listing.limit + 1
            )
        products = [Product.of(row) for row in rows]
        page = page_of(
            products, listing.limit, lambda p: (listing.sort, getattr(p, sort.column), p.id)
        )
        return page.model_dump_json().encode()

    # -- writes ----------------------------------------------------------------------------

    @handler
    async def create_product(self, message: CreateProduct) -> Written[Product]:
        try:
            product, position = await write_with_position(self.db, self._create, message)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a product with SKU {message.fields['sku']!r} exists") from None
        await self._changed(message.by, [product.id], position)
        return Written(product, position)

    @handler
    async def update_product(self, message: UpdateProduct) -> Written[Product]:
        product, position = await write_with_position(self.db, self._update, message)
        await self._changed(message.by, [product.id], position)
        return Written(product, position)

    @handler
    async def delete_product(self, message: DeleteProduct) -> Written[None]:
        _, position = await write_with_position(self.db, self._delete, message)
        await self._changed(message.by, [message.product_id], position)
        return Written(None, position)

    @handler
    async def products_changed(self, message: ProductsChanged) -> None:
        await self.cache.invalidate(message.product_ids, message.position)

    async def _create(self, conn: Connection, message: CreateProduct) -> Product:
        row = await catalog.insert_product(conn, message.fields)
        await _audit(conn, message.by, "product.create", row["id"], None, row)
        return Product.of(row)

    async def _update(self, conn: Connection, message: UpdateProduct) -> Product:
        before = await _locked(conn, message.product_id)
        after = await catalog.update_product(conn, message.product_id, message.changes)
        await _audit(conn, message.by, "product.update", message.product_id, before, after)
        return Product.of(after)

    async def _delete(self, conn: Connection, message: DeleteProduct) -> None:
        before = await _locked(conn, message.product_id)
        await catalog.delete_product(conn, message.product_id)
        await _audit(conn, message.by, "product.delete", message.product_id, before, None)

    async def _changed(self, by: Principal, product_ids: list[int], position: int) -> None:
        await self.cache.invalidate(product_ids, position)
        await self.sessions.ask(RememberWrite(by.user_id, position))


async def _locked(conn: Connection, product_id: int) -> asyncpg.Record:
    row = await catalog.product_for_update(conn, product_id)
    if row is None:
        raise NotFound(f"no product {product_id}")
    return row


def _snapshot(row: asyncpg.Record | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {name: row[name] for name in ("sku", *sorted(catalog.EDITABLE))}


async def _audit(
    conn: Connection,
    by: Principal,
    action: str,
    product_id: int,
    before: asyncpg.Record | None,
    after: asyncpg.Record | None,
) -> None:
    await audit.record(
        conn,
        actor_id=int(by.user_id),
        action=action,
        target_type="product",
        target_id=str(product_id),
        before=_snapshot(before),
        after=_snapshot(after),
        request_id=request_id.get(),
    )


CATALOG = ActorKey[Catalog]("catalog")
