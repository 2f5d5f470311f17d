"""Queries on product images (`product_images`): which image file a product shows, and which
job makes its thumbnail."""

from __future__ import annotations

from uuid import UUID

from asyncpg import Record

from storage.postgres import Connection


async def attach(
    conn: Connection, product_id: int, file_id: UUID, by: str, thumbnail_job: UUID
) -> Record | None:
    """Show `file_id` for the product (replacing any image it had), its thumbnail made by job
    `thumbnail_job`; None if there is no live product."""
    return await conn.fetchrow(
        """
        INSERT INTO product_images (product_id, file_id, attached_by, thumbnail_job)
        SELECT id, $2, $3, $4 FROM products WHERE id = $1 AND deleted_at IS NULL
        ON CONFLICT (product_id) DO UPDATE
            SET file_id = EXCLUDED.file_id, attached_by = EXCLUDED.attached_by,
                attached_at = now(), thumbnail_job = EXCLUDED.thumbnail_job
        RETURNING product_id, file_id, thumbnail_job
        """,
        product_id,
        file_id,
        by,
        thumbnail_job,
    )


async def get(conn: Connection, product_id: int) -> Record | None:
    """The image of a live product."""
    return await conn.fetchrow(
        """
        SELECT i.product_id, i.file_id
        FROM product_images i JOIN products p ON p.id = i.product_id
        WHERE i.product_id = $1 AND p.deleted_at IS NULL
        """,
        product_id,
    )


async def describe(conn: Connection, product_id: int) -> Record | None:
    """The image of a live product, with its type and whether its thumbnail exists."""
    return await conn.fetchrow(
        """
        SELECT i.product_id, i.file_id, i.thumbnail_job, f.content_type,
               t.id IS NOT NULL AS thumbnail_made
        FROM product_images i
        JOIN products p ON p.id = i.product_id
        JOIN files f ON f.id = i.file_id
        LEFT JOIN files t ON t.derived_from = i.file_id AND t.variant = 'thumbnail'
        WHERE i.product_id = $1 AND p.deleted_at IS NULL
        """,
        product_id,
    )


async def detach(conn: Connection, product_id: int) -> bool:
    return (
        await conn.fetchval(
            "DELETE FROM product_images WHERE product_id = $1 RETURNING true", product_id
        )
        is not None
    )
