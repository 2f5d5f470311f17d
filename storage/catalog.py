"""The catalog's queries (plain parameterised SQL).

Listing queries are composed from fixed fragments: only the filters a request uses appear in
its WHERE clause, so each combination gets its own prepared statement and a plan that uses
the matching index (a catch-all `$1 IS NULL OR ...` query plans badly). Values are always
parameters; no request text ever becomes SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from storage.postgres import Connection
from storage.sql import Params

Record = asyncpg.Record

COLUMNS: Final = (
    "id, sku, name, description, price_minor, currency, stock, active, created_at, updated_at"
)
EDITABLE: Final = frozenset({"name", "description", "price_minor", "currency", "stock", "active"})


@dataclass(frozen=True, slots=True)
class Sort:
    column: str
    descending: bool


SORTS: Final = {
    "newest": Sort("id", True),
    "oldest": Sort("id", False),
    "price_asc": Sort("price_minor", False),
    "price_desc": Sort("price_minor", True),
    "name_asc": Sort("name", False),
    "name_desc": Sort("name", True),
}


@dataclass(frozen=True, slots=True)
class Filters:
    text: str | None = None  # a substring of the name, case-insensitive
    min_price: int | None = None
    max_price: int | None = None
    in_stock: bool | None = None
    currency: str | None = None
    include_inactive: bool = False


async def insert_product(conn: Connection, fields: dict[str, Any]) -> Record:
    """A new product; raises `asyncpg.UniqueViolationError` when its SKU is taken."""
    return await conn.fetchrow(
        f"""
        INSERT INTO products (sku, name, description, price_minor, currency, stock, active)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        RETURNING {COLUMNS}
        """,  # noqa: S608 - COLUMNS is a constant
        fields["sku"],
        fields["name"],
        fields["description"],
        fields["price_minor"],
        fields["currency"],
        fields["stock"],
        fields["active"],
    )


async def product(conn: Connection, product_id: int) -> Record | None:
    """A live (not deleted) product."""
    return await conn.fetchrow(
        f"SELECT {COLUMNS} FROM products WHERE id = $1 AND deleted_at IS NULL",  # noqa: S608
        product_id,
    )


async def product_for_update(conn: Connection, product_id: int) -> Record | None:
    """A live product, locked until the end of the transaction."""
    return await conn.fetchrow(
        f"""
        SELECT {COLUMNS} FROM products WHERE id = $1 AND deleted_at IS NULL
        FOR NO KEY UPDATE
        """,  # noqa: S608 - COLUMNS is a constant
        product_id,
    )


async def update_product(conn: Connection, product_id: int, changes: dict[str, Any]) -> Record:
    """Apply `changes` (keys from `EDITABLE`) to a live product."""
    names = sorted(changes)
    if not set(names) <= EDITABLE:
        raise ValueError(f"not editable: {sorted(set(names) - EDITABLE)}")
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
    return await conn.fetchrow(
        f"""
        UPDATE products SET {assignments}
        WHERE id = $1 AND deleted_at IS NULL
        RETURNING {COLUMNS}
        """,  # noqa: S608 - column names come from EDITABLE, values are parameters
        product_id,
        *(changes[name] for name in names),
    )


async def delete_product(conn: Connection, product_id: int) -> bool:
    """Soft-delete a live product: it leaves the catalog, its order history stays."""
    status = await conn.execute(
        "UPDATE products SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL", product_id
    )
    return status == "UPDATE 1"


async def products_page(
    conn: Connection,
    filters: Filters,
    sort: Sort,
    after: tuple[Any, int] | None,
    limit: int,
) -> list[Record]:
    """Up to `limit` live products matching `filters`, in `sort` order, after the sort key
    `after` (the `(sort value, id)` of the previous page's last row)."""
    sql, args = _listing(filters, sort, after, limit)
    return await conn.fetch(sql, *args)


def _listing(
    filters: Filters, sort: Sort, after: tuple[Any, int] | None, limit: int
) -> tuple[str, list[Any]]:
    param = Params()
    where = ["deleted_at IS NULL"]
    if not filters.include_inactive:
        where.append("active")
    if filters.text:
        where.append(f"name ILIKE {param(_contains(filters.text))}")
    if filters.min_price is not None:
        where.append(f"price_minor >= {param(filters.min_price)}")
    if filters.max_price is not None:
        where.append(f"price_minor <= {param(filters.max_price)}")
    if filters.in_stock is not None:
        where.append("stock > 0" if filters.in_stock else "stock = 0")
    if filters.currency:
        where.append(f"currency = {param(filters.currency)}")
    direction, beyond = ("DESC", "<") if sort.descending else ("ASC", ">")
    if after is not None:
        if sort.column == "id":
            where.append(f"id {beyond} {param(after[1])}")
        else:
            where.append(f"({sort.column}, id) {beyond} ({param(after[0])}, {param(after[1])})")
    order = "id" if sort.column == "id" else f"{sort.column} {direction}, id"
    sql = (
        f"SELECT {COLUMNS} FROM products WHERE {' AND '.join(where)} "  # noqa: S608 - fixed fragments
        f"ORDER BY {order} {direction} LIMIT {param(limit)}"
    )
    return sql, param.values


def _contains(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
