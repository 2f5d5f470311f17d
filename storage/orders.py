"""Orders: placing one against the stock, reading them, moving them along their states."""

from __future__ import annotations

from typing import Final

import asyncpg

from storage.postgres import Connection
from storage.sql import Params

Record = asyncpg.Record

# One statement places a batch of orders (one, or the many that arrived together): for each,
# it takes the stock and writes the order, its items and its first history entry, or, when
# the stock cannot cover it, changes nothing for it. Being one statement, it is atomic on its
# own: no explicit transaction, so placing a batch is one round trip and one commit.
#
# * Every product any order of the batch wants is locked up front, in id order, so
#   concurrent batches over the same products queue up instead of deadlocking. A lock that
#   had to wait returns the row as the other batch left it, so the verdicts judge the stock
#   as it is now, and nobody can change it before this statement ends.
# * The orders are judged in batch order: an order is placed if every product it names is
#   live, for sale and covers its quantity on top of what the orders before it in the batch
#   want of it (`running`), and all share one currency. Counting the earlier orders' wants
#   whether or not they are placed keeps this one pass: it never places an order the stock
#   cannot cover, and may refuse one it could have (after a refused neighbour), which is why
#   an order refused in a batch of several is placed again on its own before it is answered.
# * Prices, SKUs and names are captured from the locked rows and totals computed here. The
#   products' CHECK (stock >= 0) stands behind all of this: no code path can take stock
#   below zero.
# * Each order's row carries what was found of its products (`found`), so a refusal can say
#   why without asking again, and the order's follow-up job is asked for in the same
#   statement, through the jobs' outbox (`job_outbox`, one narrow row): the relay makes it a
#   job once this commits.
#
# $1: each order's user; $2, $3, $4: each line's order (1-based, as in $1), product, quantity.
PLACE: Final = """
WITH batch AS (
    SELECT n::integer, user_id FROM unnest($1::bigint[]) WITH ORDINALITY AS b (user_id, n)
), wanted AS (
    SELECT * FROM unnest($2::integer[], $3::bigint[], $4::integer[]) AS w (n, product_id, quantity)
), locked AS (
    SELECT p.id, p.sku, p.name, p.price_minor, p.currency, p.stock, p.active
    FROM products p
    WHERE p.id IN (SELECT product_id FROM wanted) AND p.deleted_at IS NULL
    ORDER BY p.id
    FOR NO KEY UPDATE OF p
), lines AS (
    SELECT w.n, w.product_id, w.quantity, l.sku, l.name, l.price_minor, l.currency, l.stock,
           l.active, sum(w.quantity) OVER (PARTITION BY w.product_id ORDER BY w.n) AS running
    FROM wanted w LEFT JOIN locked l ON l.id = w.product_id
), verdict AS (
    SELECT n,
           bool_and(sku IS NOT NULL AND active AND running <= stock)
               AND count(DISTINCT currency) = 1 AS ok,
           count(DISTINCT currency) AS currencies,
           min(currency) AS currency,
           sum(price_minor * quantity) AS total_minor,
           coalesce(json_agg(json_build_object('id', product_id, 'stock', stock, 'active', active))
                        FILTER (WHERE sku IS NOT NULL), '[]') AS found
    FROM lines
    GROUP BY n
), accepted AS (
    SELECT v.n, nextval(pg_get_serial_sequence('orders', 'id')) AS id, b.user_id,
           v.total_minor, v.currency
    FROM verdict v JOIN batch b USING (n)
    WHERE v.ok
), reserved AS (
    UPDATE products p SET stock = p.stock - taken.quantity
    FROM (
        SELECT l.product_id, sum(l.quantity) AS quantity
        FROM lines l JOIN accepted a USING (n)
        GROUP BY l.product_id
    ) taken
    WHERE p.id = taken.product_id
), placed AS (
    INSERT INTO orders (id, user_id, total_minor, currency) OVERRIDING SYSTEM VALUE
    SELECT id, user_id, total_minor, currency FROM accepted
    RETURNING id, user_id, status, total_minor, currency, created_at, updated_at
), items AS (
    INSERT INTO order_items (order_id, product_id, sku, name, quantity, unit_price_minor)
    SELECT a.id, l.product_id, l.sku, l.name, l.quantity, l.price_minor
    FROM accepted a JOIN lines l USING (n)
    RETURNING order_id, product_id, sku, name, quantity, unit_price_minor
), history AS (
    INSERT INTO order_status_history (order_id, status, changed_by)
    SELECT id, status, user_id FROM placed
), follow_up AS (
    INSERT INTO job_outbox (type, owner_id, params)
    SELECT 'order_followup', user_id::text, jsonb_build_object('order_id', id) FROM placed
), items_by_order AS (
    SELECT order_id,
           json_agg(json_build_object(
               'product_id', product_id, 'sku', sku, 'name', name, 'quantity', quantity,
               'unit_price_minor', unit_price_minor) ORDER BY product_id) AS items
    FROM items
    GROUP BY order_id
)
SELECT placed.*, v.currencies, coalesce(i.items, '[]') AS items, v.found
FROM verdict v
LEFT JOIN accepted a USING (n)
LEFT JOIN placed ON placed.id = a.id
LEFT JOIN items_by_order i ON i.order_id = a.id
ORDER BY v.n
"""


Lines = tuple[tuple[int, int], ...]  # (product id, quantity), each product once


async def place(conn: Connection, batch: list[tuple[int, Lines]]) -> list[Record]:
    """Try to place each `(user id, lines)` order of `batch` (see `PLACE`); a row per order,
    in order. A row's `id` is None when its order was not placed: nothing changed for it, and
    `found` (the live products among those wanted, with their stock and whether they are for
    sale) and `currencies` say why."""
    users = [user_id for user_id, _ in batch]
    numbers, products, quantities = [], [], []
    for number, (_, lines) in enumerate(batch, start=1):
        for product_id, quantity in lines:
            numbers.append(number)
            products.append(product_id)
            quantities.append(quantity)
    return await conn.fetch(PLACE, users, numbers, products, quantities)


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
