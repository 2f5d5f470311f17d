"""Queries behind reports: plain SQL over the orders, meant for a replica and a cursor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from asyncpg import Record

from storage.postgres import Connection

# One row per order, oldest first; items are summed per order through its primary-key index,
# so rows stream out as they are read instead of after a whole-range aggregation.
_ORDERS = """
    SELECT o.id, o.created_at, o.user_id, o.status, o.currency, o.total_minor,
           i.lines, i.quantity
    FROM orders o
    CROSS JOIN LATERAL (
        SELECT count(*) AS lines, coalesce(sum(quantity), 0) AS quantity
        FROM order_items WHERE order_id = o.id
    ) i
    WHERE o.created_at >= $1 AND o.created_at < $2
    ORDER BY o.created_at, o.id
"""


async def count_orders(conn: Connection, start: datetime, end: datetime) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM orders WHERE created_at >= $1 AND created_at < $2", start, end
    )


def orders_between(
    conn: Connection, start: datetime, end: datetime, *, prefetch: int = 1000
) -> AsyncIterator[Record]:
    """The orders of [start, end), streamed through a server-side cursor (inside a
    transaction of the caller's)."""
    return conn.cursor(_ORDERS, start, end, prefetch=prefetch).__aiter__()
