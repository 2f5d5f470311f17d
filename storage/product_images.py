"""Queries on product images (`product_images`): which image file a product shows, and how
its thumbnail is coming along."""

from __future__ import annotations

from uuid import UUID

from asyncpg import Record

from storage.postgres import Connection


async def attach(conn: Connection, product_id: int, file_id: UUID, by: str) -> Record | None:
    """Show `file_id` for the product (replacing any image it had); None if no live product."""
    return await conn.fetchrow(
        """
        INSERT INTO product_images (product_id, file_id, attached_by)
        SELECT id, $2, $3 FROM products WHERE id = $1 AND deleted_at IS NULL
        ON CONFLICT (product_id) DO UPDATE
            SET file_id = EXCLUDED.file_id, attached_by = EXCLUDED.attached_by,
                attached_at = now(), thumbnail_state = 'queued', thumbnail_error = NULL
        RETURNING product_id, file_id, thumbnail_state, thumbnail_error
        """,
        product_id,
        file_id,
        by,
    )


async def get(conn: Connection, product_id: int) -> Record | None:
    """The image of a live product."""
    return await conn.fetchrow(
        """
        SELECT i.product_id, i.file_id, i.thumbnail_state, i.thumbnail_error
        FROM product_images i JOIN products p ON p.id = i.product_id
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


async def set_thumbnail_state(
    conn: Connection, product_id: int, file_id: UUID, state: str, error: str | None = None
) -> None:
    """Record the thumbnail's progress, unless another image was attached meanwhile."""
    await conn.execute(
        """
        UPDATE product_images SET thumbnail_state = $3, thumbnail_error = $4
        WHERE product_id = $1 AND file_id = $2
        """,
        product_id,
        file_id,
        state,
        error,
    )


async def unfinished(conn: Connection) -> list[Record]:
    """Thumbnails queued or interrupted (a process stopped mid-way): to be made again."""
    return await conn.fetch(
        """
        SELECT product_id, file_id FROM product_images
        WHERE thumbnail_state IN ('queued', 'running')
        """
    )
