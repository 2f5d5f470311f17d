"""Orders: placing one against the stock, reading them, moving them along their states."""

from __future__ import annotations

from typing import Final

import asyncpg

from storage.postgres import Connection
from storage.sql import Params

Record = asyncpg.Record

# One statement takes the stock and writes the order, its items and its first history entry,
# or, when the stock cannot cover it, changes nothing at all. Being one statement, it is
# atomic on its own: no explicit transaction, so placing an order is one round trip.
#
# * The wanted products are locked in id order, so concurrent orders over the same products
#   queue up instead of deadlocking. A lock that had to wait returns the row as the other
#   order left it, so `verdict` judges the stock as it is now, and nobody can change it
#   before this statement ends.
# * Only if every product is live, for sale, in stock for its quantity, and all share one
#   currency, is the stock taken and the order written; prices, SKUs and names are captured
#   from the locked rows and the total computed here. The products' CHECK (stock >= 0)
#   stands behind all of this: no code path can take stock below zero.
# * The answer carries what was found (`found`), so a refusal can say why without asking again.
# * The order's follow-up job is asked for in the same statement, through the jobs' outbox
#   (`job_outbox`, one narrow row): the relay makes it a job once this commits.
PLACE: Final = """
WITH wanted AS (
    SELECT * FROM unnest($2::bigint[], $3::integer[]) AS w (product_id, quantity)
), locked AS (
    SELECT p.id, p.sku, p.name, p.price_minor, p.currency, p.stock, p.active, w.quantity
    FROM products p JOIN wanted w ON w.product_id = p.id
    WHERE p.deleted_at IS NULL
    ORDER BY p.id
    FOR NO KEY UPDATE OF p
), verdict AS (
    SELECT count(*) = cardinality($2::bigint[])
               AND coalesce(bool_and(active AND stock >= quantity), false)
               AND count(DISTINCT currency) = 1 AS ok,
           count(DISTINCT currency) AS currencies,
           min(currency) AS currency,
           sum(price_minor * quantity) AS total_minor
    FROM locked
), reserved AS (
    UPDATE products p SET stock = p.stock - l.quantity
    FROM locked l, verdict v
    WHERE v.ok AND p.id = l.id
), placed AS (
    INSERT INTO orders (user_id, total_minor, currency)
    SELECT $1, total_minor, currency FROM verdict WHERE ok
    RETURNING id, user_id, status, total_minor, currency, created_at, updated_at
), lines AS (
    INSERT INTO order_items (order_id, product_id, sku, name, quantity, unit_price_minor)
    SELECT placed.id, l.id, l.sku, l.name, l.quantity, l.price_minor FROM placed, locked l
    RETURNING product_id, sku, name, quantity, unit_price_minor
), history AS (
    INSERT INTO order_status_history (order_id, status, changed_by)
    SELECT id, status, user_id FROM placed
), follow_up AS (
    INSERT INTO job_outbox (type, owner_id, params)
    SELECT 'order_followup', user_id::text, jsonb_build_object('order_id', id) FROM placed
)
SELECT placed.*, verdict.currencies,
       (SELECT coalesce(json_agg(lines ORDER BY product_id), '[]') FROM lines) AS items,
       (SELECT coalesce(json_agg(json_build_object(
                    'id', id, 'stock', stock, 'active', active)), '[]')
        FROM locked) AS found
FROM verdict LEFT JOIN placed ON true
"""


async def place(
    conn: Connection, user_id: int, product_ids: list[int], quantities: list[int]
) -> Record:
    """Try to place the order (see `PLACE`). The row's `id` is None when it was not placed:
    then nothing changed, and `found` (the live products among those wanted, with their
    stock and whether they are for sale) and `currencies` say why."""
    return await conn.fetchrow(PLACE, user_id, product_ids, quantities)


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
