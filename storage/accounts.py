"""Accounts: users, their roles, and refresh-token sessions (plain parameterised SQL)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from storage.postgres import Connection

Record = asyncpg.Record

# -- users -----------------------------------------------------------------------------------


async def insert_user(
    conn: Connection, email: str, name: str, password_hash: str, roles: list[str]
) -> Record:
    """A new user with `roles`; raises `asyncpg.UniqueViolationError` for a taken e-mail."""
    user_id = await conn.fetchval(
        "INSERT INTO users (email, name, password_hash) VALUES ($1, $2, $3) RETURNING id",
        email,
        name,
        password_hash,
    )
    await conn.execute(
        "INSERT INTO user_roles (user_id, role) SELECT $1, unnest($2::text[])", user_id, roles
    )
    return await user(conn, user_id)


async def user(conn: Connection, user_id: int) -> Record | None:
    return await conn.fetchrow("SELECT * FROM user_accounts WHERE id = $1", user_id)


async def user_for_update(conn: Connection, user_id: int) -> Record | None:
    """The user, locked until the end of the transaction (for read-modify-write)."""
    found = await conn.fetchval("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE", user_id)
    return None if found is None else await user(conn, user_id)


async def credentials(conn: Connection, email: str) -> Record | None:
    """The user and their password hash, by e-mail (case-insensitive)."""
    return await conn.fetchrow(
        """
        SELECT a.*, u.password_hash FROM user_accounts a JOIN users u ON u.id = a.id
        WHERE a.email = $1
        """,
        email,
    )


async def set_password_hash(conn: Connection, user_id: int, password_hash: str) -> None:
    await conn.execute("UPDATE users SET password_hash = $2 WHERE id = $1", user_id, password_hash)


async def users_page(
    conn: Connection, *, after_id: int | None, limit: int, email_contains: str | None
) -> list[Record]:
    """Users in id order after `after_id`, optionally those whose e-mail contains a text."""
    return await conn.fetch(
        """
        SELECT * FROM user_accounts
        WHERE ($1::bigint IS NULL OR id > $1)
          AND ($2::text IS NULL OR strpos(lower(email::text), lower($2)) > 0)
        ORDER BY id
        LIMIT $3
        """,
        after_id,
        email_contains,
        limit,
    )


async def update_user(
    conn: Connection, user_id: int, *, name: str | None, active: bool | None
) -> Record | None:
    """Change the given fields (None leaves one as it is)."""
    updated = await conn.fetchval(
        """
        UPDATE users SET name = coalesce($2, name), active = coalesce($3, active)
        WHERE id = $1 RETURNING id
        """,
        user_id,
        name,
        active,
    )
    return None if updated is None else await user(conn, user_id)


async def replace_roles(
    conn: Connection, user_id: int, roles: list[str], granted_by: int | None
) -> None:
    """Make `roles` exactly the user's roles, keeping the grant time of the ones it had."""
    await conn.execute(
        "DELETE FROM user_roles WHERE user_id = $1 AND NOT (role = ANY($2::text[]))",
        user_id,
        roles,
    )
    await conn.execute(
        """
        INSERT INTO user_roles (user_id, role, granted_by)
        SELECT $1, unnest($2::text[]), $3
        ON CONFLICT (user_id, role) DO NOTHING
        """,
        user_id,
        roles,
        granted_by,
    )


async def other_active_admins(conn: Connection, user_id: int) -> int:
    """How many active admins there are besides `user_id`. Changes that may remove an admin
    run one at a time (a transaction-scoped advisory lock), so two admins demoting each other
    at once cannot leave none."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADMIN_CHANGES)
    return await conn.fetchval(
        """
        SELECT count(*) FROM users u JOIN user_roles r ON r.user_id = u.id
        WHERE r.role = 'admin' AND u.active AND u.id <> $1
        """,
        user_id,
    )


_ADMIN_CHANGES = 0x61646D696E  # any constant shared by every such change


async def roles(conn: Connection) -> list[Record]:
    return await conn.fetch("SELECT name, description FROM roles ORDER BY name")


async def grant_role(conn: Connection, user_id: int, role: str) -> None:
    await conn.execute(
        "INSERT INTO user_roles (user_id, role) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        user_id,
        role,
    )


# -- refresh tokens --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewRefreshToken:
    id: uuid.UUID
    family_id: uuid.UUID
    user_id: int
    token_hash: bytes
    access_token_id: uuid.UUID
    access_expires_at: datetime
    expires_at: datetime


async def insert_refresh_token(conn: Connection, token: NewRefreshToken) -> None:
    await conn.execute(
        """
        INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, access_token_id,
                                    access_expires_at, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        """,
        token.id,
        token.family_id,
        token.user_id,
        token.token_hash,
        token.access_token_id,
        token.access_expires_at,
        token.expires_at,
    )


async def use_refresh_token(conn: Connection, token_hash: bytes) -> Record | None:
    """Mark a live, unused token used and return its family and user; None if it is not
    live and unused. The row lock makes two concurrent uses of one token take turns: the
    second finds it used."""
    return await conn.fetchrow(
        """
        UPDATE refresh_tokens SET used_at = now()
        WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()
        RETURNING family_id, user_id
        """,
        token_hash,
    )


async def refresh_token(conn: Connection, token_hash: bytes) -> Record | None:
    return await conn.fetchrow(
        """
        SELECT id, family_id, user_id, used_at, revoked_at, expires_at
        FROM refresh_tokens WHERE token_hash = $1
        """,
        token_hash,
    )


async def revoke_family(conn: Connection, family_id: uuid.UUID, reason: str) -> list[Record]:
    """Revoke every live token of a family; return the access tokens that may still be live."""
    await conn.execute(
        """
        UPDATE refresh_tokens SET revoked_at = now(), revoked_reason = $2
        WHERE family_id = $1 AND revoked_at IS NULL
        """,
        family_id,
        reason,
    )
    return await conn.fetch(
        """
        SELECT access_token_id, access_expires_at FROM refresh_tokens
        WHERE family_id = $1 AND access_expires_at > now()
        """,
        family_id,
    )


async def revoke_user_sessions(conn: Connection, user_id: int, reason: str) -> list[Record]:
    """Revoke every live session of a user; return the access tokens that may still be live."""
    await conn.execute(
        """
        UPDATE refresh_tokens SET revoked_at = now(), revoked_reason = $2
        WHERE user_id = $1 AND revoked_at IS NULL
        """,
        user_id,
        reason,
    )
    return await live_access_tokens(conn, user_id)


async def live_access_tokens(conn: Connection, user_id: int) -> list[Record]:
    """The access tokens issued to a user that have not expired yet."""
    return await conn.fetch(
        """
        SELECT access_token_id, access_expires_at FROM refresh_tokens
        WHERE user_id = $1 AND access_expires_at > now()
        """,
        user_id,
    )


async def delete_expired_refresh_tokens(conn: Connection, grace_days: int) -> int:
    """Forget tokens that expired more than `grace_days` ago; return how many."""
    status = await conn.execute(
        "DELETE FROM refresh_tokens WHERE expires_at < now() - make_interval(days => $1)",
        grace_days,
    )
    return int(status.split()[-1])
