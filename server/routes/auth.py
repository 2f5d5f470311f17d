"""Accounts over HTTP: register, log in, refresh, log out, and who am I."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import EmailStr, Field

from actors.accounts import (
    ACCOUNTS,
    GetUser,
    Login,
    Logout,
    Refresh,
    Register,
    TokenPair,
    User,
)
from server.fields import Name
from server.freshness import READ_AFTER, written
from server.ratelimit import LIMITER, account_key
from server.routing import PUBLIC, Input, Reply, Routes
from server.state import ACTORS, PRINCIPAL

routes = Routes("/api/v1", tag="auth")

Email = Annotated[EmailStr, Field(max_length=254)]
Secret = {"format": "password", "writeOnly": True}
NewPassword = Annotated[
    str, Field(min_length=8, max_length=256, repr=False, json_schema_extra=Secret)
]
Password = Annotated[str, Field(min_length=1, max_length=256, repr=False, json_schema_extra=Secret)]
RefreshToken = Annotated[
    str, Field(min_length=16, max_length=512, repr=False, json_schema_extra=Secret)
]


class Registration(Input):
    email: Email
    password: NewPassword
    name: Name


class Credentials(Input):
    email: Email
    password: Password


class RefreshRequest(Input):
    refresh_token: RefreshToken


@routes.post(
    "/auth/register",
    access=PUBLIC,
    status=201,
    rate_limit="auth",
    response_headers=READ_AFTER,
    errors={409: "An account with this e-mail address exists"},
)
async def register(request: web.Request, body: Registration) -> Reply[User]:
    """Create a customer account. A taken e-mail address is 409."""
    return written(
        await request.app[ACTORS][ACCOUNTS].ask(
            Register(email=body.email, password=body.password, name=body.name)
        )
    )


@routes.post(
    "/auth/login",
    access=PUBLIC,
    rate_limit="auth",
    errors={401: "Wrong e-mail address or password (the same answer for both)"},
)
async def login(request: web.Request, body: Credentials) -> TokenPair:
    """Exchange e-mail and password for an access token and a refresh token.

    A wrong password and an unknown address get the same 401, after the same work. Attempts
    against one account are limited wherever they come from (`login-account` policy)."""
    limiter = request.app.get(LIMITER)
    if limiter is not None:
        await limiter.charge(request, "login-account", identity=account_key(body.email))
    return await request.app[ACTORS][ACCOUNTS].ask(Login(body.email, body.password))


@routes.post(
    "/auth/refresh",
    access=PUBLIC,
    rate_limit="auth",
    errors={401: "Invalid, expired or already used (its session is then revoked)"},
)
async def refresh(request: web.Request, body: RefreshRequest) -> TokenPair:
    """Exchange a refresh token for a new pair. Each refresh token works once: presenting
    a used one again revokes its whole session (401)."""
    return await request.app[ACTORS][ACCOUNTS].ask(Refresh(body.refresh_token))


@routes.post("/auth/logout", access="account", status=204)
async def logout(request: web.Request, body: RefreshRequest) -> None:
    """End the session: the refresh token's family is revoked and the access token used
    for this call stops working at once."""
    await request.app[ACTORS][ACCOUNTS].ask(Logout(request[PRINCIPAL], body.refresh_token))


@routes.get("/me", access="account")
async def me(request: web.Request) -> User:
    """The caller's own account."""
    return await request.app[ACTORS][ACCOUNTS].ask(GetUser(int(request[PRINCIPAL].user_id)))
