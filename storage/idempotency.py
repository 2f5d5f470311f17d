"""Idempotency-Key records (see migration 0013), used inside the transaction doing the work.

A request with a key takes a transaction-scoped advisory lock on it first: a second request
with the same key while the first runs finds the lock taken (409, in progress). Once it has
the lock it looks for the stored response (replay it, or 422 if the request differs), and
after the work it stores its own response in the same transaction. The primary key is the
last word: should two requests ever both get past the lookup, the second one's insert fails
and its transaction rolls back.
"""

from __future__ import annotations

import asyncpg

from storage.postgres import Connection


async def lock(conn: Connection, user_id: int, scope: str, key: str) -> bool:
    """Take the key's lock until the end of the transaction; False if another holds it."""
    return await conn.fetchval(
        """
        SELECT pg_try_advisory_xact_lock(
            hashtextextended(format('%s:%s:%s', $1::bigint, $2::text, $3::text), 0))
        """,
        user_id,
        scope,
        key,
    )


async def lookup(conn: Connection, user_id: int, scope: str, key: str) -> asyncpg.Record | None:
    """The stored `request_hash`, `status` and `response`, if the key was used."""
    return await conn.fetchrow(
        """
        SELECT request_hash, status, response FROM idempotency_keys
        WHERE user_id = $1 AND scope = $2 AND key = $3
        """,
        user_id,
        scope,
        key,
    )


async def remember(
    conn: Connection,
    user_id: int,
    scope: str,
    key: str,
    *,
    request_hash: bytes,
    status: int,
    response: bytes,
) -> None:
    await conn.execute(
        """
        INSERT INTO idempotency_keys (user_id, scope, key, request_hash, status, response)
        VALUES ($1, $2, $3, $4, $5, $6)
        """,
        user_id,
        scope,
        key,
        request_hash,
        status,
        response,
    )


async def forget_older_than(conn: Connection, hours: int) -> int:
    status = await conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)", hours
    )
    return int(status.split()[-1])
