"""Test callers: accounts made through the API, with roles given directly in the database
(as `backend seed` does for the first admin), each with a fresh login."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from server.state import SETTINGS
from storage import accounts


@dataclass
class Caller:
    id: int
    email: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def new_email() -> str:
    return f"user-{secrets.token_hex(6)}@example.com"


async def register(api: TestClient, email: str, password: str, name: str = "Test") -> Any:
    response = await api.post(
        "/api/v1/auth/register", json={"email": email, "password": password, "name": name}
    )
    assert response.status == 201, await response.text()
    return await response.json()


async def login(api: TestClient, email: str, password: str) -> Any:
    response = await api.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status == 200, await response.text()
    return await response.json()


async def sign_up(api: TestClient, *roles: str) -> Caller:
    """A new account holding `roles` (customer when none are given), logged in."""
    email, password = new_email(), secrets.token_urlsafe(12)
    user = await register(api, email, password)
    if roles and list(roles) != ["customer"]:
        conn = await asyncpg.connect(api.app[SETTINGS].primary_dsn)
        try:
            await accounts.replace_roles(conn, user["id"], sorted(roles), None)
        finally:
            await conn.close()
    tokens = await login(api, email, password)
    return Caller(user["id"], email, password, tokens["access_token"], tokens["refresh_token"])
