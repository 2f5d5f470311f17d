"""Queries on uploaded files' metadata (`files`). The bytes are in the file store."""

from __future__ import annotations

from uuid import UUID

from asyncpg import Record

from storage.postgres import Connection


async def insert(
    conn: Connection,
    *,
    file_id: UUID,
    owner_id: str,
    original_name: str,
    content_type: str,
    size: int,
    sha256: bytes,
    storage_key: str,
) -> Record:
    return await conn.fetchrow(
        """
        INSERT INTO files (id, owner_id, original_name, content_type, size, sha256, storage_key)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        RETURNING id, owner_id, original_name, content_type, size, sha256, storage_key, created_at
        """,
        file_id,
        owner_id,
        original_name,
        content_type,
        size,
        sha256,
        storage_key,
    )


async def get(conn: Connection, file_id: UUID) -> Record | None:
    return await conn.fetchrow(
        """
        SELECT id, owner_id, original_name, content_type, size, sha256, storage_key, created_at
        FROM files WHERE id = $1
        """,
        file_id,
    )


async def delete(conn: Connection, file_id: UUID) -> Record | None:
    """Delete the row; return what it was (None when there was none). The row stays locked
    until the transaction ends, so the object can be removed before the delete commits."""
    return await conn.fetchrow(
        """
        DELETE FROM files WHERE id = $1
        RETURNING id, owner_id, original_name, content_type, size, sha256, storage_key, created_at
        """,
        file_id,
    )
