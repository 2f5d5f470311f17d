"""What orders' follow-up jobs write: the notices a customer is sent (plain SQL)."""

from __future__ import annotations

from asyncpg import Record

from storage.postgres import Connection


async def order_summary(conn: Connection, order_id: int) -> Record | None:
    """The order with its lines, for the confirmation."""
    return await conn.fetchrow(
        """
        SELECT o.id, o.user_id, o.total_minor, o.currency, o.created_at,
               coalesce(json_agg(json_build_object(
                   'name', i.name, 'sku', i.sku, 'quantity', i.quantity,
                   'unit_price_minor', i.unit_price_minor) ORDER BY i.product_id)
                   FILTER (WHERE i.order_id IS NOT NULL), '[]') AS items
        FROM orders o LEFT JOIN order_items i ON i.order_id = o.id
        WHERE o.id = $1
        GROUP BY o.id
        """,
        order_id,
    )


async def record(
    conn: Connection, order_id: int, user_id: int, kind: str, subject: str, body: str
) -> bool:
    """Write the notice unless it exists already; whether this call wrote it."""
    status = await conn.execute(
        """
        INSERT INTO order_notices (order_id, kind, user_id, subject, body)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (order_id, kind) DO NOTHING
        """,
        order_id,
        kind,
        user_id,
        subject,
        body,
    )
    return status.endswith(" 1")
