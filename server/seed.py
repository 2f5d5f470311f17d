"""`backend seed`: the first admin account and the demo catalog. Safe to run again: what
exists is left as it is (an existing admin's password is never changed)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import asyncpg

from actors.access import ADMIN
from actors.passwords import Passwords
from config import ConfigError, Settings
from storage import accounts

DEV_ADMIN_EMAIL = "admin@example.com"
ADMIN_SECRET_FILE = "admin-password"  # noqa: S105 - a file name


async def seed(settings: Settings) -> list[str]:
    """Seed the database; return a line per thing done, for the operator."""
    conn = await asyncpg.connect(settings.primary_dsn)
    try:
        return [await seed_admin(conn, settings)]
    finally:
        await conn.close()


async def seed_admin(conn: asyncpg.Connection, settings: Settings) -> str:
    """The admin named by `ADMIN_EMAIL` (in dev, `admin@example.com` when unset) with
    `ADMIN_PASSWORD`; outside production a missing password is generated into the state
    folder (mode 0600), never printed."""
    email = settings.admin_email or (DEV_ADMIN_EMAIL if settings.app_env == "dev" else None)
    if email is None:
        return "admin: none (set ADMIN_EMAIL and ADMIN_PASSWORD to create one)"
    existing = await accounts.credentials(conn, email)
    if existing is not None:
        await accounts.grant_role(conn, existing["id"], ADMIN)
        return f"admin: {email} exists (password unchanged)"
    password, where = _admin_password(settings)
    passwords = Passwords.from_settings(settings)
    try:
        password_hash = await passwords.hash(password)
    finally:
        passwords.close()
    async with conn.transaction():
        await accounts.insert_user(conn, email, "Administrator", password_hash, [ADMIN])
    return f"admin: {email} created{where}"


def _admin_password(settings: Settings) -> tuple[str, str]:
    if settings.admin_password is not None:
        return settings.admin_password.get_secret_value(), ""
    if settings.app_env == "prod":
        raise ConfigError("ADMIN_PASSWORD must be set with ADMIN_EMAIL when APP_ENV=prod")
    path = Path(settings.state_dir) / ADMIN_SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(password + "\n")
    return password, f"; its password is in {path}"
