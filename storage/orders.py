"""Orders: placing one against the stock, reading them, moving them along their states."""

from __future__ import annotations

from typing import Final

import asyncpg

from storage.postgres import Connection
from storage.sql import Params

Record = asyncpg.Record

# One statement takes the stock and writes the order, its items and its first history entry.
#
# * Products are locked in id order, so concurrent orders over the same products queue up
#   instead of deadlocking.
# * Stock is taken only where there is enough (`stock >= quantity`, re-checked against the
#   latest committed row once the lock is held); the order is written only if every item got
#   its stock, in one currency. Otherwise no order row comes back and the caller rolls the
#   transaction back, returning what was taken. The products' CHECK (stock >= 0) stands
#   behind all of this: no code path can take stock below zero.
# * Prices, SKUs and names are captured from the locked product rows, the total computed here.
PLACE: Final = """
WITH wanted AS (
    SELECT * FROM unnest($2::bigint[], $3::integer[]) AS w (product_id, quantity)
), locked AS (
    SELECT p.id FROM products p JOIN wanted w ON w.product_id = p.id
    WHERE p.deleted_at IS NULL AND p.active
    ORDER BY p.id
    FOR NO KEY UPDATE OF p
), reserved AS (
    UPDATE products p SET stock = p.stock - w.quantity
    FROM wanted w, locked l
    WHERE p.id = w.product_id AND l.id = p.id AND p.stock >= w.quantity
    RETURNING p.id AS product_id, p.sku, p.name, w.quantity, p.price_minor AS unit_price_minor,
              p.currency
), summary AS (
    SELECT count(*) AS items, count(DISTINCT currency) AS currencies, min(currency) AS currency,
           coalesce(sum(unit_price_minor * quantity), 0) AS total_minor
    FROM reserved
), placed AS (
    INSERT INTO orders (user_id, total_minor, currency)
    SELECT $1, total_minor, currency FROM summary
    WHERE items = cardinality($2::bigint[]) AND currencies = 1
    RETURNING id, user_id, status, total_minor, currency, created_at, updated_at
), lines AS (
    INSERT INTO order_items (order_id, product_id, sku, name, quantity, unit_price_minor)
    SELECT placed.id, r.product_id, r.sku, r.name, r.quantity, r.unit_price_minor
    FROM placed, reserved r
    RETURNING product_id, sku, name, quantity, unit_price_minor
), history AS (
    INSERT INTO order_status_history (order_id, status, changed_by)
    SELECT id, status, user_id FROM placed
)
SELECT placed.*, summary.currencies,
       (SELECT coalesce(json_agg(lines ORDER BY product_id), '[]') FROM lines) AS items,
       (SELECT coalesce(array_agg(product_id), '{}') FROM reserved) AS reserved
FROM summary LEFT JOIN placed ON true
"""


async def place(
    conn: Connection, user_id: int, product_ids: list[int], quantities: list[int]
) -> Record:
    """Try to place the order (see `PLACE`). The row's `id` is None when it was not placed:
    roll back, and ask `availability` about the products not in `reserved` to say why
    (`currencies` > 1: the items' currencies differ)."""
    return await conn.fetchrow(PLACE, user_id, product_ids, quantities)


async def availability(conn: Connection, product_ids: list[int]) -> list[Record]:
    """Stock and sale status of the live products among `product_ids`."""
    return await conn.fetch(
        """
        SELECT id, stock, active, currency FROM products
        WHERE id = ANY($1::bigint[]) AND deleted_at IS NULL
        """,
        product_ids,
    )


_ORDER_COLUMNS: Final = """
    o.id, o.user_id, o.status, o.total_minor, o.currency, o.created_at, o.updated_at,
    (SELECT coalesce(json_agg(json_build_object(
                'product_id', i.product_id, 'sku', i.sku, 'name', i.name,
                'quantity', i.quantity, 'unit_price_minor', i.unit_price_minor)
            ORDER BY i.product_id), '[]')
     FROM order_items i WHERE i.order_id = o.id) AS items
"""
_HISTORY_COLUMN: Final = """
    (SELECT coalesce(json_agg(json_build_object(
                'status', h.status, 'at', h.changed_at, 'by', h.changed_by, 'note', h.note)
            ORDER BY h.id), '[]')
     FROM order_status_history h WHERE h.order_id = o.id) AS history
"""
_ONE_ORDER: Final = f"SELECT {_ORDER_COLUMNS}, {_HISTORY_COLUMN} FROM orders o WHERE o.id = $1"  # noqa: S608 - constants


async def order(conn: Connection, order_id: int) -> Record | None:
    """An order with its items and its status history."""
    return await conn.fetchrow(_ONE_ORDER, order_id)


async def orders_page(
    conn: Connection,
    *,
    user_id: int | None,
    status: str | None,
    before_id: int | None,
    limit: int,
) -> list[Record]:
    """Orders newest first (of one user when `user_id` is given), older than `before_id`."""
    param = Params()
    where = ["true"]
    if user_id is not None:
        where.append(f"o.user_id = {param(user_id)}")
    if status is not None:
        where.append(f"o.status = {param(status)}")
    if before_id is not None:
        where.append(f"o.id < {param(before_id)}")
    sql = (
        f"SELECT {_ORDER_COLUMNS} FROM orders o WHERE {' AND '.join(where)} "  # noqa: S608 - fixed fragments
        f"ORDER BY o.id DESC LIMIT {param(limit)}"
    )
    return await conn.fetch(sql, *param.values)


async def lock_order(conn: Connection, order_id: int) -> Record | None:
    """The order's owner and status, locked until the end of the transaction."""
    return await conn.fetchrow(
        "SELECT user_id, status FROM orders WHERE id = $1 FOR NO KEY UPDATE", order_id
    )


async def set_status(
    conn: Connection, order_id: int, status: str, changed_by: int, note: str | None
) -> None:
    """Move a locked order to `status` and record the change."""
    await conn.execute("UPDATE orders SET status = $2 WHERE id = $1", order_id, status)
    await conn.execute(
        """
        INSERT INTO order_status_history (order_id, status, changed_by, note)
        VALUES ($1, $2, $3, $4)
        """,
        order_id,
        status,
        changed_by,
        note,
    )


async def restock(conn: Connection, order_id: int) -> list[int]:
    """Put an order's items back in stock (products locked in id order); return their ids."""
    rows = await conn.fetch(
        """
        WITH items AS (
            SELECT product_id, quantity FROM order_items WHERE order_id = $1
        ), locked AS (
            SELECT p.id FROM products p JOIN items i ON i.product_id = p.id
            ORDER BY p.id
            FOR NO KEY UPDATE OF p
        )
        UPDATE products p SET stock = p.stock + i.quantity
        FROM items i, locked l
        WHERE p.id = i.product_id AND l.id = p.id
        RETURNING p.id
        """,
        order_id,
    )
    return [row["id"] for row in rows]
