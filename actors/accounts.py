"""The accounts actor: users and their credentials, login sessions, and their administration.

* Passwords are Argon2id hashes made off the event loop (`actors.passwords`). Login checks a
  password against the stored hash, or against a dummy hash for an unknown or disabled
  account, so every wrong answer costs the same and reads the same.
* A login opens a session: a short-lived access JWT and a long-lived opaque refresh token
  (only its SHA-256 is stored). Each refresh uses the token up and hands out its successor in
  the same family; a used token presented again revokes the family, and the access tokens the
  family issued are deny-listed at once (`actors.sessions`).
* Admin changes (a user's name, activation, roles) are written with an audit-log entry in
  the same transaction. A role change deny-lists the user's live access tokens, so the next
  refresh carries the new roles; deactivation also ends every session. No change may leave
  the system without an active admin.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel

from actors import background, pools
from actors.access import ADMIN, CUSTOMER, permissions_of
from actors.errors import Conflict, NotFound, Unauthenticated
from actors.identity import Principal
from actors.pages import Page, page_of
from actors.passwords import Passwords
from actors.runtime import Actor, ActorRef, Message, handler
from actors.sessions import DenyAccess, RememberWrite, Sessions
from actors.system import ActorKey
from actors.tokens import AccessTokens
from config import Settings
from observability import metrics
from observability.logging import request_id
from storage import accounts, audit
from storage.freshness import Written, write_with_position
from storage.postgres import Connection, Database, ReplicaSet

log = logging.getLogger("backend.accounts")

MAINTENANCE_INTERVAL = 24 * 3600.0
AUDIT_MONTHS_AHEAD = 3
EXPIRED_TOKEN_GRACE_DAYS = 7


# -- what it answers -------------------------------------------------------------------------


class User(BaseModel):
    id: int
    email: str
    name: str
    roles: list[str]
    active: bool
    created_at: datetime

    @classmethod
    def of(cls, row: asyncpg.Record) -> User:
        return cls(
            id=row["id"],
            email=row["email"],
            name=row["name"],
            roles=list(row["roles"]),
            active=row["active"],
            created_at=row["created_at"],
        )


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - a scheme name, not a secret
    expires_in: int
    refresh_expires_in: int


class Role(BaseModel):
    name: str
    description: str
    permissions: list[str]


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor_id: int | None
    action: str
    target_type: str
    target_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None


# -- messages --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Register(Message[Written[User]]):
    email: str
    password: str
    name: str


@dataclass(frozen=True, slots=True)
class Login(Message[TokenPair]):
    email: str
    password: str


@dataclass(frozen=True, slots=True)
class Refresh(Message[TokenPair]):
    refresh_token: str


@dataclass(frozen=True, slots=True)
class Logout(Message[None]):
    principal: Principal
    refresh_token: str


@dataclass(frozen=True, slots=True)
class GetUser(Message[User]):
    user_id: int


@dataclass(frozen=True, slots=True)
class ListUsers(Message[Page[User]]):
    after_id: int | None
    limit: int
    email_contains: str | None = None


@dataclass(frozen=True, slots=True)
class UpdateUser(Message[Written[User]]):
    by: Principal
    user_id: int
    name: str | None = None
    active: bool | None = None


@dataclass(frozen=True, slots=True)
class SetRoles(Message[Written[User]]):
    by: Principal
    user_id: int
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ListRoles(Message[list[Role]]):
    pass


@dataclass(frozen=True, slots=True)
class ListAudit(Message[Page[AuditEntry]]):
    before: tuple[datetime, int] | None
    limit: int
    target_type: str | None = None
    target_id: str | None = None
    actor_id: int | None = None


@dataclass(frozen=True, slots=True)
class _Refused:
    """A refresh that must fail, after its transaction has committed what it revoked."""

    reason: str
    live_access: Sequence[asyncpg.Record] = ()
    reused: bool = False


# -- the actor -------------------------------------------------------------------------------


class Accounts(Actor):
    def __init__(
        self,
        settings: Settings,
        tokens: AccessTokens,
        replicas: ReplicaSet,
        sessions: ActorRef[Sessions],
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.replicas = replicas
        self.sessions = sessions
        self._stack = AsyncExitStack()
        self.db: Database
        self.passwords: Passwords

    async def on_start(self) -> None:
        s = self.settings
        self.db = await self._stack.enter_async_context(
            pools.database(s, self.replicas, "accounts")
        )
        self.passwords = Passwords.from_settings(s)
        self._stack.callback(self.passwords.close)
        await self.passwords.prepare()
        upkeep = background.repeat(
            self._maintain, every=MAINTENANCE_INTERVAL, name="accounts:upkeep", log=log
        )
        self._stack.push_async_callback(background.cancel, upkeep)

    async def on_stop(self) -> None:
        await self._stack.aclose()

    # -- credentials and sessions ----------------------------------------------------------

    @handler
    async def register(self, message: Register) -> Written[User]:
        password_hash = await self.passwords.hash(message.password)
        try:
            row, position = await write_with_position(
                self.db,
                accounts.insert_user,
                message.email,
                message.name,
                password_hash,
                [CUSTOMER],
            )
        except asyncpg.UniqueViolationError:
            raise Conflict("an account with this e-mail address already exists") from None
        user = User.of(row)
        await self._remember(user.id, position)
        return Written(user, position)

    @handler
    async def login(self, message: Login) -> TokenPair:
        async with self.db.primary() as conn:
            row = await accounts.credentials(conn, message.email)
        # An unknown or disabled account is checked against the dummy hash: same work, same answer.
        stored = row["password_hash"] if row is not None and row["active"] else None
        if not await self.passwords.verify(stored, message.password):
            metrics.AUTH_EVENTS.labels("login_failed").inc()
            raise Unauthenticated("wrong e-mail address or password")
        assert row is not None
        if self.passwords.needs_rehash(row["password_hash"]):
            new_hash = await self.passwords.hash(message.password)
            await self.db.write(accounts.set_password_hash, row["id"], new_hash)
        pair, position = await write_with_position(
            self.db, self._open_session, row["id"], row["roles"], uuid.uuid4()
        )
        # The login wrote; from now on this user's reads see at least the account as it is.
        await self._remember(row["id"], position)
        metrics.AUTH_EVENTS.labels("login").inc()
        return pair

    @handler
    async def refresh(self, message: Refresh) -> TokenPair:
        outcome = await self.db.write(self._rotate, _digest(message.refresh_token))
        if isinstance(outcome, TokenPair):
            metrics.AUTH_EVENTS.labels("refresh").inc()
            return outcome
        await self._deny(outcome.live_access)
        if outcome.reused:
            metrics.AUTH_EVENTS.labels("refresh_reuse").inc()
            log.warning("refresh token reused; session revoked")
        raise Unauthenticated(outcome.reason)

    @handler
    async def logout(self, message: Logout) -> None:
        principal = message.principal
        live = await self.db.write(
            self._end_session, _digest(message.refresh_token), int(principal.user_id)
        )
        current = []
        if principal.token_id is not None:
            current.append((principal.token_id, int(time.time()) + self.tokens.ttl_seconds))
        await self._deny(live, current)
        metrics.AUTH_EVENTS.labels("logout").inc()

    async def _open_session(
        self, conn: Connection, user_id: int, roles: Sequence[str], family_id: uuid.UUID
    ) -> TokenPair:
        access = self.tokens.issue(str(user_id), list(roles))
        secret = secrets.token_urlsafe(32)
        days = self.settings.refresh_token_days
        await accounts.insert_refresh_token(
            conn,
            accounts.NewRefreshToken(
                id=uuid.uuid4(),
                family_id=family_id,
                user_id=user_id,
                token_hash=_digest(secret),
                access_token_id=uuid.UUID(access.token_id),
                access_expires_at=datetime.fromtimestamp(access.expires_at, UTC),
                expires_at=datetime.now(UTC) + timedelta(days=days),
            ),
        )
        return TokenPair(
            access_token=access.token,
            refresh_token=secret,
            expires_in=self.tokens.ttl_seconds,
            refresh_expires_in=days * 86_400,
        )

    async def _rotate(self, conn: Connection, digest: bytes) -> TokenPair | _Refused:
        used = await accounts.use_refresh_token(conn, digest)
        if used is None:
            found = await accounts.refresh_token(conn, digest)
            if found is not None and found["used_at"] is not None and found["revoked_at"] is None:
                live = await accounts.revoke_family(conn, found["family_id"], "reuse")
                return _Refused("refresh token already used: the session is revoked", live, True)
            return _Refused("invalid or expired refresh token")
        user = await accounts.user(conn, used["user_id"])
        if user is None or not user["active"]:
            live = await accounts.revoke_family(conn, used["family_id"], "deactivated")
            return _Refused("invalid or expired refresh token", live)
        return await self._open_session(conn, user["id"], user["roles"], used["family_id"])

    async def _end_session(
        self, conn: Connection, digest: bytes, user_id: int
    ) -> Sequence[asyncpg.Record]:
        found = await accounts.refresh_token(conn, digest)
        if found is None or found["user_id"] != user_id:
            return []  # nothing of the caller's to revoke; the access token still goes
        return await accounts.revoke_family(conn, found["family_id"], "logout")

    # -- users -----------------------------------------------------------------------------

    @handler
    async def get_user(self, message: GetUser) -> User:
        row = await self.db.read(accounts.user, message.user_id)
        if row is None:
            raise NotFound(f"no user {message.user_id}")
        return User.of(row)

    @handler
    async def list_users(self, message: ListUsers) -> Page[User]:
        rows = await self.db.read(
            accounts.users_page,
            after_id=message.after_id,
            limit=message.limit + 1,
            email_contains=message.email_contains,
        )
        return page_of([User.of(row) for row in rows], message.limit, lambda u: (u.id,))

    @handler
    async def update_user(self, message: UpdateUser) -> Written[User]:
        (user, live), position = await write_with_position(self.db, self._update_user, message)
        await self._deny(live)
        await self._remember(message.by.user_id, position)
        return Written(user, position)

    @handler
    async def set_roles(self, message: SetRoles) -> Written[User]:
        (user, live), position = await write_with_position(self.db, self._set_roles, message)
        await self._deny(live)
        await self._remember(message.by.user_id, position)
        return Written(user, position)

    async def _update_user(
        self, conn: Connection, message: UpdateUser
    ) -> tuple[User, Sequence[asyncpg.Record]]:
        before = await _locked_user(conn, message.user_id)
        deactivating = message.active is False and before["active"]
        if deactivating and ADMIN in before["roles"]:
            await _keep_an_admin(conn, message.user_id)
        after = await accounts.update_user(
            conn, message.user_id, name=message.name, active=message.active
        )
        assert after is not None  # locked above
        await _audit(conn, message.by, "user.update", message.user_id, before, after)
        live = []
        if deactivating:
            live = await accounts.revoke_user_sessions(conn, message.user_id, "deactivated")
        return User.of(after), live

    async def _set_roles(
        self, conn: Connection, message: SetRoles
    ) -> tuple[User, Sequence[asyncpg.Record]]:
        before = await _locked_user(conn, message.user_id)
        roles = sorted(set(message.roles))
        if ADMIN in before["roles"] and ADMIN not in roles and before["active"]:
            await _keep_an_admin(conn, message.user_id)
        await accounts.replace_roles(conn, message.user_id, roles, int(message.by.user_id))
        after = await accounts.user(conn, message.user_id)
        await _audit(conn, message.by, "user.roles.set", message.user_id, before, after)
        changed = list(before["roles"]) != roles
        live = await accounts.live_access_tokens(conn, message.user_id) if changed else []
        return User.of(after), live

    @handler
    async def list_roles(self, message: ListRoles) -> list[Role]:
        rows = await self.db.read(accounts.roles)
        return [
            Role(
                name=r["name"], description=r["description"], permissions=permissions_of(r["name"])
            )
            for r in rows
        ]

    @handler
    async def list_audit(self, message: ListAudit) -> Page[AuditEntry]:
        rows = await self.db.read(
            audit.entries,
            before=message.before,
            limit=message.limit + 1,
            target_type=message.target_type,
            target_id=message.target_id,
            actor_id=message.actor_id,
        )
        entries = [AuditEntry(**dict(row)) for row in rows]
        return page_of(entries, message.limit, lambda e: (e.at.isoformat(), e.id))

    # -- helpers ---------------------------------------------------------------------------

    async def _deny(
        self, live: Sequence[asyncpg.Record], more: Sequence[tuple[str, int]] = ()
    ) -> None:
        """Deny-list the access tokens in `live` (rows of `access_token_id`,
        `access_expires_at`) and `more` (`(token id, Unix expiry)` pairs)."""
        tokens = [
            (row["access_token_id"].hex, int(row["access_expires_at"].timestamp())) for row in live
        ]
        tokens.extend(more)
        if tokens:
            await self.sessions.ask(DenyAccess(tuple(tokens)))

    async def _remember(self, user_id: int | str, position: int) -> None:
        await self.sessions.ask(RememberWrite(str(user_id), position))

    async def _maintain(self) -> None:
        async with self.db.primary() as conn:
            await audit.ensure_partitions(conn, AUDIT_MONTHS_AHEAD)
            await accounts.delete_expired_refresh_tokens(conn, EXPIRED_TOKEN_GRACE_DAYS)


def _digest(refresh_token: str) -> bytes:
    return hashlib.sha256(refresh_token.encode()).digest()


async def _locked_user(conn: Connection, user_id: int) -> asyncpg.Record:
    row = await accounts.user_for_update(conn, user_id)
    if row is None:
        raise NotFound(f"no user {user_id}")
    return row


async def _keep_an_admin(conn: Connection, user_id: int) -> None:
    if not await accounts.other_active_admins(conn, user_id):
        raise Conflict("this change would leave no active admin")


def _snapshot(row: asyncpg.Record) -> dict[str, Any]:
    return {"name": row["name"], "active": row["active"], "roles": list(row["roles"])}


async def _audit(
    conn: Connection,
    by: Principal,
    action: str,
    user_id: int,
    before: asyncpg.Record,
    after: asyncpg.Record,
) -> None:
    await audit.record(
        conn,
        actor_id=int(by.user_id),
        action=action,
        target_type="user",
        target_id=str(user_id),
        before=_snapshot(before),
        after=_snapshot(after),
        request_id=request_id.get(),
    )


ACCOUNTS = ActorKey[Accounts]("accounts")
