"""The audit log of admin changes (monthly partitions; see migration 0011)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from storage.postgres import Connection


async def record(
    conn: Connection,
    *,
    actor_id: int | None,
    action: str,
    target_type: str,
    target_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    request_id: str | None,
) -> None:
    """Write one entry; call it in the transaction that makes the change."""
    await conn.execute(
        """
        INSERT INTO audit_log (actor_id, action, target_type, target_id, before, after, request_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        """,
        actor_id,
        action,
        target_type,
        target_id,
        before,
        after,
        request_id,
    )


async def entries(
    conn: Connection,
    *,
    before: tuple[datetime, int] | None,
    limit: int,
    target_type: str | None,
    target_id: str | None,
    actor_id: int | None,
) -> list[asyncpg.Record]:
    """Entries newest first, those older than the `(at, id)` of `before` when given."""
    return await conn.fetch(
        """
        SELECT id, at, actor_id, action, target_type, target_id, before, after, request_id
        FROM audit_log
        WHERE ($1::timestamptz IS NULL OR (at, id) < ($1, $2))
          AND ($3::text IS NULL OR target_type = $3)
          AND ($4::text IS NULL OR target_id = $4)
          AND ($5::bigint IS NULL OR actor_id = $5)
        ORDER BY at DESC, id DESC
        LIMIT $6
        """,
        before[0] if before else None,
        before[1] if before else None,
        target_type,
        target_id,
        actor_id,
        limit,
    )


async def ensure_partitions(conn: Connection, months_ahead: int) -> int:
    """Create the monthly partitions up to `months_ahead` months on; return how many."""
    return await conn.fetchval("SELECT audit_log_ensure_partitions($1)", months_ahead)
