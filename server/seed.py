"""`backend seed`: the first admin account and the demo catalog. Safe to run again: what
exists is left as it is (an existing admin's password is never changed).

Products are written directly, then retired from the catalog cache like any write."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import asyncpg

from actors.access import ADMIN
from actors.passwords import Passwords
from config import ConfigError, Settings
from storage import accounts, catalog
from storage.catalog_cache import CatalogCache
from storage.postgres import primary_position
from storage.redis import Keys, open_redis

DEV_ADMIN_EMAIL = "admin@example.com"
ADMIN_SECRET_FILE = "admin-password"  # noqa: S105 - a file name


async def seed(settings: Settings) -> list[str]:
    """Seed the database; return a line per thing done, for the operator."""
    conn = await asyncpg.connect(settings.primary_dsn)
    try:
        admin = await seed_admin(conn, settings)
        added = await seed_products(conn)
        if added:
            await _retire_cached(settings, added, await primary_position(conn))
    finally:
        await conn.close()
    already = len(DEMO_PRODUCTS) - len(added)
    return [admin, f"demo products: {len(added)} added, {already} already there"]


async def _retire_cached(settings: Settings, product_ids: list[int], position: int) -> None:
    """A server may be running, or have left cached pages behind in Redis: retire them."""
    async with open_redis(settings.redis_dsn, name="seed", size=1) as redis:
        cache = CatalogCache(
            redis,
            Keys(settings.redis_namespace),
            ttl=settings.catalog_cache_seconds,
            near_ttl=settings.catalog_near_cache_seconds,
            near_size=1,
        )
        await cache.invalidate(product_ids, position)


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


# A small shop to browse and order from: (sku, name, description, price in cents, stock).
DEMO_PRODUCTS = (
    ("MUG-001", "Stoneware mug", "Holds 350 ml of coffee; dishwasher safe.", 1299, 120),
    ("MUG-002", "Enamel camping mug", "Light, unbreakable, 400 ml.", 1499, 80),
    ("TEE-001", "Organic cotton T-shirt", "Heavyweight, relaxed fit.", 2500, 200),
    ("TEE-002", "Long-sleeve T-shirt", "Soft jersey, crew neck.", 3200, 150),
    ("BAG-001", "Canvas tote bag", "Sturdy 12 oz canvas with inner pocket.", 1800, 90),
    ("BAG-002", "Roll-top backpack", "Waterproof, 22 litres.", 8900, 40),
    ("NTB-001", "Dotted notebook A5", "160 pages of 100 g paper.", 1400, 300),
    ("PEN-001", "Fountain pen", "Steel nib, converter included.", 4500, 60),
    ("LMP-001", "Desk lamp", "Warm LED, adjustable arm.", 5900, 35),
    ("PLT-001", "Ceramic plant pot", "With drainage hole and saucer.", 2200, 70),
    ("TEA-001", "Loose-leaf green tea", "100 g, first flush.", 950, 250),
    ("CHO-001", "Dark chocolate bar", "72% cacao, 100 g.", 450, 0),  # sold out
)


async def seed_products(conn: asyncpg.Connection) -> list[int]:
    """The demo catalog: each product whose SKU is not taken by a live product; returns the
    ids of those added."""
    added = []
    for sku, name, description, price, stock in DEMO_PRODUCTS:
        if await conn.fetchval("SELECT 1 FROM products WHERE sku = $1 AND deleted_at IS NULL", sku):
            continue
        fields = {
            "sku": sku,
            "name": name,
            "description": description,
            "price_minor": price,
            "currency": "EUR",
            "stock": stock,
            "active": True,
        }
        added.append((await catalog.insert_product(conn, fields))["id"])
    return added


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
