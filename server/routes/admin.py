"""Administration over HTTP: accounts, their roles, and the audit log (admins only)."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field, model_validator

from actors.access import RoleName
from actors.accounts import (
    ACCOUNTS,
    AuditEntry,
    GetUser,
    ListAudit,
    ListRoles,
    ListUsers,
    Role,
    SetRoles,
    UpdateUser,
    User,
)
from actors.pages import Page, decode_cursor, integer, timestamp
from server.fields import Cursor, Id, Limit, Name
from server.freshness import READ_AFTER, written
from server.routing import Input, Reply, Routes
from server.state import ACTORS, PRINCIPAL

routes = Routes("/api/v1/admin", tag="admin")


class UserQuery(Input):
    cursor: Cursor | None = None
    limit: Limit = 50
    email: Annotated[str, Field(min_length=1, max_length=254)] | None = None


class UserChanges(Input):
    name: Name | None = None
    active: bool | None = None

    @model_validator(mode="after")
    def _something(self) -> UserChanges:
        if self.name is None and self.active is None:
            raise ValueError("give at least one of name, active")
        return self


class RoleAssignment(Input):
    roles: Annotated[list[RoleName], Field(max_length=3)]


class AuditQuery(Input):
    cursor: Cursor | None = None
    limit: Limit = 50
    target_type: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    target_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    actor_id: Id | None = None


@routes.get("/users", access="users:manage")
async def list_users(request: web.Request, query: UserQuery) -> Page[User]:
    """Accounts in id order, optionally those whose e-mail address contains `email`."""
    after = decode_cursor(query.cursor, (integer,))[0] if query.cursor else None
    return await request.app[ACTORS][ACCOUNTS].ask(ListUsers(after, query.limit, query.email))


@routes.get("/users/{user_id}", access="users:manage")
async def get_user(request: web.Request, user_id: Id) -> User:
    """One account."""
    return await request.app[ACTORS][ACCOUNTS].ask(GetUser(user_id))


@routes.patch(
    "/users/{user_id}",
    access="users:manage",
    response_headers=READ_AFTER,
    errors={409: "The change would leave no active admin"},
)
async def update_user(request: web.Request, user_id: Id, body: UserChanges) -> Reply[User]:
    """Rename or (de)activate an account. Deactivation ends all its sessions at once."""
    change = UpdateUser(request[PRINCIPAL], user_id, name=body.name, active=body.active)
    return written(await request.app[ACTORS][ACCOUNTS].ask(change))


@routes.put(
    "/users/{user_id}/roles",
    access="users:manage",
    response_headers=READ_AFTER,
    errors={409: "The change would leave no active admin"},
)
async def set_roles(request: web.Request, user_id: Id, body: RoleAssignment) -> Reply[User]:
    """Replace an account's roles. Its live access tokens stop working; the next refresh
    carries the new roles. Removing the last active admin is 409."""
    change = SetRoles(request[PRINCIPAL], user_id, tuple(body.roles))
    return written(await request.app[ACTORS][ACCOUNTS].ask(change))


@routes.get("/roles", access="users:manage")
async def list_roles(request: web.Request) -> list[Role]:
    """The roles and the permissions each one holds."""
    return await request.app[ACTORS][ACCOUNTS].ask(ListRoles())


@routes.get("/audit", access="audit:read")
async def list_audit(request: web.Request, query: AuditQuery) -> Page[AuditEntry]:
    """Admin changes, newest first: who did what to which thing, when, before and after."""
    before = decode_cursor(query.cursor, (timestamp, integer)) if query.cursor else None
    return await request.app[ACTORS][ACCOUNTS].ask(
        ListAudit(
            before,
            query.limit,
            target_type=query.target_type,
            target_id=query.target_id,
            actor_id=query.actor_id,
        )
    )
