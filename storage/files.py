"""Queries on uploaded files' metadata (`files`). The bytes are in the file store."""

from __future__ import annotations

from uuid import UUID

from asyncpg import Record

from storage.postgres import Connection


async def insert(
    conn: Connection,
    *,
    file_id: UUID,
    owner_id: int,
    original_name: str,
    content_type: str,
    size: int,
    sha256: bytes,
    storage_key: str,
    derived_from: UUID | None = None,
    variant: str | None = None,
) -> Record | None:
    """The new row; None when `derived_from` already has this `variant` (or is gone)."""
    return await conn.fetchrow(
        """
        INSERT INTO files (id, owner_id, original_name, content_type, size, sha256, storage_key,
                           derived_from, variant)
        SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
        WHERE $8::uuid IS NULL OR EXISTS (SELECT 1 FROM files WHERE id = $8)
        ON CONFLICT (derived_from, variant) DO NOTHING
        RETURNING id, owner_id, original_name, content_type, size, sha256, storage_key, created_at
        """,
        file_id,
        owner_id,
        original_name,
        content_type,
        size,
        sha256,
        storage_key,
        derived_from,
        variant,
    )


async def get(conn: Connection, file_id: UUID) -> Record | None:
    return await conn.fetchrow(
        """
        SELECT id, owner_id, original_name, content_type, size, sha256, storage_key, created_at
        FROM files WHERE id = $1
        """,
        file_id,
    )


async def variant_of(conn: Connection, source_id: UUID, variant: str) -> Record | None:
    return await conn.fetchrow(
        """
        SELECT id, owner_id, original_name, content_type, size, sha256, storage_key, created_at
        FROM files WHERE derived_from = $1 AND variant = $2
        """,
        source_id,
        variant,
    )


async def delete(conn: Connection, file_id: UUID) -> list[Record]:
    """Delete a file and the files derived from it; return what they were, the file first.
    The rows stay locked until the transaction ends, so the objects can be removed before
    the delete commits."""
    return await conn.fetch(
        """
        DELETE FROM files WHERE id = $1 OR derived_from = $1
        RETURNING id, owner_id, size, storage_key
        """,
        file_id,
    )
