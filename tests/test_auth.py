"""Accounts and sessions over HTTP: register, login, refresh rotation and reuse, logout,
token checks, key rotation, and admin changes with their audit trail."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from pydantic import SecretStr

from actors.tokens import GENERATED_KEYS, AccessTokens, KeyRing, load_key_ring
from config import ConfigError, Settings, load_settings
from server.app import create_app
from server.seed import seed
from server.state import SETTINGS
from storage.embedded import ServiceUrls
from tests.conftest import eventually, fresh_database, settings_for
from tests.people import Caller, login, new_email, sign_up

AUTH = "/api/v1/auth"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refresh(api: TestClient, token: str) -> tuple[int, dict]:
    response = await api.post(f"{AUTH}/refresh", json={"refresh_token": token})
    return response.status, await response.json()


async def me_status(api: TestClient, access_token: str) -> int:
    return (await api.get("/api/v1/me", headers=bearer(access_token))).status


async def test_register_then_login_then_me(api: TestClient) -> None:
    email, password = new_email(), "a long enough password"
    response = await api.post(
        f"{AUTH}/register", json={"email": email, "password": password, "name": " Ada "}
    )
    assert response.status == 201
    user = await response.json()
    assert user.keys() >= {"id", "email", "name", "roles"}
    assert (user["email"], user["name"], user["roles"]) == (email, "Ada", ["customer"])
    assert "password" not in str(user)
    assert "hash" not in str(user)
    assert "/" in response.headers["X-Read-After"]  # the write's WAL position

    taken = await api.post(
        f"{AUTH}/register", json={"email": email.upper(), "password": password, "name": "B"}
    )
    assert taken.status == 409
    assert taken.content_type == "application/problem+json"

    tokens = await login(api, email.upper(), password)  # addresses are case-insensitive
    assert tokens.keys() >= {"access_token", "refresh_token", "token_type", "expires_in"}
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == api.app[SETTINGS].access_token_seconds
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header["kid"]
    assert header["alg"] == "HS256"

    me = await api.get("/api/v1/me", headers=bearer(tokens["access_token"]))
    assert me.status == 200
    assert await me.json() == user


async def test_refresh_rotates_and_reuse_revokes_the_family(api: TestClient) -> None:
    caller = await sign_up(api)
    status, second = await refresh(api, caller.refresh_token)
    assert status == 200
    assert second["refresh_token"] != caller.refresh_token
    assert await me_status(api, second["access_token"]) == 200

    status, third = await refresh(api, second["refresh_token"])
    assert status == 200

    # The first token again: it leaked. Its whole family dies, tokens issued since included.
    status, problem = await refresh(api, caller.refresh_token)
    assert status == 401
    assert "revoked" in problem["detail"]
    assert (await refresh(api, third["refresh_token"]))[0] == 401
    assert await me_status(api, third["access_token"]) == 401
    assert await me_status(api, second["access_token"]) == 401

    # Another session of the same account is untouched.
    other = await login(api, caller.email, caller.password)
    assert await me_status(api, other["access_token"]) == 200


async def test_logout_revokes_refresh_and_access_tokens(api: TestClient) -> None:
    caller = await sign_up(api)
    other_session = await login(api, caller.email, caller.password)
    response = await api.post(
        f"{AUTH}/logout", json={"refresh_token": caller.refresh_token}, headers=caller.headers
    )
    assert response.status == 204
    assert await response.read() == b""
    assert await me_status(api, caller.access_token) == 401  # before its expiry
    assert (await refresh(api, caller.refresh_token))[0] == 401
    assert await me_status(api, other_session["access_token"]) == 200

    anonymous = await api.post(f"{AUTH}/logout", json={"refresh_token": "x" * 43})
    assert anonymous.status == 401


async def test_wrong_credentials_get_one_answer_after_the_same_work(api: TestClient) -> None:
    caller = await sign_up(api)

    def verifications() -> float:
        return REGISTRY.get_sample_value("password_hash_seconds_count", {"operation": "verify"})

    answers = []
    for email in (caller.email, new_email()):  # a wrong password; an unknown account
        before = verifications()
        response = await api.post(
            f"{AUTH}/login", json={"email": email, "password": "not the password"}
        )
        assert verifications() == before + 1  # a hash was checked either way
        body = await response.json()
        answers.append((response.status, body["title"], body["detail"]))
    assert answers[0] == answers[1]
    assert answers[0][0] == 401


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({"email": "not-an-address", "password": "long enough", "name": "A"}, {"email"}),
        ({"email": "NEW", "password": "short", "name": "A"}, {"password"}),
        ({"email": "NEW", "password": "long enough", "name": "   "}, {"name"}),
        ({"email": "NEW", "password": "long enough"}, {"name"}),
        ({"email": "NEW", "password": "long enough", "name": "A", "roles": ["admin"]}, {"roles"}),
        ({"email": "NEW", "password": 12345678, "name": "A"}, {"password"}),
    ],
)
async def test_bad_registration_is_422_and_creates_nothing(
    api: TestClient, settings: Settings, payload: dict, fields: set[str]
) -> None:
    email = new_email()
    payload = {k: email if v == "NEW" else v for k, v in payload.items()}
    response = await api.post(f"{AUTH}/register", json=payload)
    assert response.status == 422
    problem = await response.json()
    assert {e["field"] for e in problem["errors"]} == fields
    assert "long enough" not in await response.text()  # passwords are never echoed
    conn = await asyncpg.connect(settings.primary_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM users WHERE email = $1", email) == 0
    finally:
        await conn.close()


def forge(claims: dict, key: bytes, *, alg: str = "HS256", kid: str | None = None) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def unsigned(claims: dict, kid: str) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{part(claims)}."


async def test_forged_and_broken_tokens_are_refused(api: TestClient, settings: Settings) -> None:
    caller = await sign_up(api)
    ring = load_key_ring(settings)
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(caller.id),
        "roles": ["admin"],
        "jti": secrets.token_hex(16),
        "iat": now,
        "exp": now + 600,
    }
    kid, key = ring.signing_kid, ring.signing_key
    good = forge(claims, key, kid=kid)
    assert await me_status(api, good) == 200  # the forger's recipe is right...
    tampered = caller.access_token[:-4] + ("AAAA" if caller.access_token[-4:] != "AAAA" else "BBBB")
    refused = {
        "alg none": unsigned(claims, kid),
        "other algorithm, right key": forge(claims, key, alg="HS512", kid=kid),
        "unknown key id": forge(claims, key, kid="someone-else"),
        "no key id": forge(claims, key),
        "wrong key": forge(claims, secrets.token_bytes(32), kid=kid),
        "expired": forge({**claims, "iat": now - 99, "exp": now - 60}, key, kid=kid),
        "other audience": forge({**claims, "aud": "another-api"}, key, kid=kid),
        "unknown role": forge({**claims, "roles": ["root"]}, key, kid=kid),
        "no token id": forge({k: v for k, v in claims.items() if k != "jti"}, key, kid=kid),
        "tampered signature": tampered,
        "garbage": "not.a.token",
    }
    for name, token in refused.items():
        response = await api.get("/api/v1/me", headers=bearer(token))
        assert response.status == 401, name
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
    # A bad credential is refused even where none is needed, and so is a non-bearer scheme.
    assert (await api.get("/livez", headers=bearer("not.a.token"))).status == 401
    basic = await api.get("/api/v1/me", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status == 401


def test_key_rotation_keeps_old_tokens_valid() -> None:
    old = ("2024-12", secrets.token_bytes(32))
    new = ("2025-01", secrets.token_bytes(32))
    options = {"issuer": "backend", "audience": "api", "ttl_seconds": 60}
    before = AccessTokens(KeyRing([old], "HS256"), **options)
    after = AccessTokens(KeyRing([new, old], "HS256"), **options)
    issued = before.issue("7", ["customer"])
    assert after.verify(issued.token).user_id == "7"  # signed by the retiring key
    fresh = after.issue("7", ["staff"])
    assert jwt.get_unverified_header(fresh.token)["kid"] == "2025-01"
    assert after.verify(fresh.token).roles == {"staff"}


def test_keys_are_required_in_production_and_generated_once_elsewhere(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="JWT_KEYS"):
        load_settings(app_env="prod", jwt_keys="")
    with pytest.raises(ConfigError, match="shorter than 32 bytes"):
        load_settings(jwt_keys="k1:short")
    configured = load_settings(jwt_keys=f"k2:{'x' * 32},k1:{'y' * 40}", state_dir=tmp_path)
    assert load_key_ring(configured).signing_kid == "k2"
    dev = load_settings(app_env="dev", jwt_keys="", state_dir=tmp_path)
    first, second = load_key_ring(dev), load_key_ring(dev)
    assert first.signing_key == second.signing_key
    assert len(first.signing_key) >= 64
    assert (tmp_path / GENERATED_KEYS).stat().st_mode & 0o777 == 0o600


async def test_admin_changes_roles_with_audit_and_revokes_old_tokens(api: TestClient) -> None:
    admin = await sign_up(api, "admin")
    user = await sign_up(api)
    assert (await api.get("/api/v1/admin/users", headers=user.headers)).status == 403

    response = await api.put(
        f"/api/v1/admin/users/{user.id}/roles",
        json={"roles": ["staff", "customer"]},
        headers=admin.headers,
    )
    assert response.status == 200
    assert (await response.json())["roles"] == ["customer", "staff"]
    assert await me_status(api, user.access_token) == 401  # carries the old roles
    status, tokens = await refresh(api, user.refresh_token)
    assert status == 200
    assert jwt.decode(tokens["access_token"], options={"verify_signature": False})["roles"] == [
        "customer",
        "staff",
    ]

    audit = await api.get(
        "/api/v1/admin/audit",
        params={"target_type": "user", "target_id": str(user.id)},
        headers=admin.headers,
    )
    [entry] = (await audit.json())["items"]
    assert entry["actor_id"] == admin.id
    assert entry["action"] == "user.roles.set"
    assert entry["before"]["roles"] == ["customer"]
    assert entry["after"]["roles"] == ["customer", "staff"]
    assert entry["request_id"]

    bad = await api.put(
        f"/api/v1/admin/users/{user.id}/roles", json={"roles": ["root"]}, headers=admin.headers
    )
    assert bad.status == 422
    missing = await api.put(
        "/api/v1/admin/users/999999999/roles", json={"roles": []}, headers=admin.headers
    )
    assert missing.status == 404


async def test_deactivation_ends_every_session(api: TestClient) -> None:
    admin = await sign_up(api, "admin")
    user = await sign_up(api)
    response = await api.patch(
        f"/api/v1/admin/users/{user.id}", json={"active": False}, headers=admin.headers
    )
    assert response.status == 200
    assert (await response.json())["active"] is False
    assert await me_status(api, user.access_token) == 401
    assert (await refresh(api, user.refresh_token))[0] == 401
    response = await api.post(
        f"{AUTH}/login", json={"email": user.email, "password": user.password}
    )
    assert response.status == 401


async def test_admin_lists_users_by_pages(api: TestClient) -> None:
    admin = await sign_up(api, "admin")
    marker = secrets.token_hex(4)
    for n in range(3):
        body = {"email": f"page-{marker}-{n}@example.com", "password": "long enough", "name": "P"}
        registered = await api.post(f"{AUTH}/register", json=body)
    # The admin did not write these: they read them fresh by passing the position along.
    fresh = {**admin.headers, "X-Read-After": registered.headers["X-Read-After"]}
    seen: list[str] = []
    params = {"limit": "2", "email": marker}
    while True:
        response = await api.get("/api/v1/admin/users", params=params, headers=fresh)
        page = await response.json()
        seen += [user["email"] for user in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == [f"page-{marker}-{n}@example.com" for n in range(3)]
    bad = await api.get("/api/v1/admin/users?cursor=bm9wZQ", headers=admin.headers)
    assert bad.status == 422
    assert [e["field"] for e in (await bad.json())["errors"]] == ["cursor"]


async def test_roles_list_their_permissions(api: TestClient) -> None:
    admin: Caller = await sign_up(api, "admin")
    roles = await (await api.get("/api/v1/admin/roles", headers=admin.headers)).json()
    by_name = {role["name"]: role["permissions"] for role in roles}
    assert set(by_name) == {"customer", "staff", "admin"}
    assert "users:manage" in by_name["admin"]
    assert "users:manage" not in by_name["staff"]


async def test_seed_creates_the_admin_once(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    email = new_email()
    configured = settings.model_copy(
        update={"admin_email": email, "admin_password": SecretStr("seeded password")}
    )
    first, again = await seed(configured), await seed(configured)
    assert "created" in first[0]
    assert "exists" in again[0]
    assert again[1].startswith("demo products: 0 added")

    async def listed() -> bool:  # once this process has heard of the seeding
        found = await (await api.get("/api/v1/products", params={"q": "Stoneware mug"})).json()
        return [p["sku"] for p in found["items"]] == ["MUG-001"]

    await eventually(listed)
    tokens = await login(api, email, "seeded password")
    me = await api.get("/api/v1/me", headers=bearer(tokens["access_token"]))
    assert (await me.json())["roles"] == ["admin"]

    generated = settings.model_copy(
        update={"admin_email": new_email(), "admin_password": None, "state_dir": tmp_path}
    )
    assert str(tmp_path) in (await seed(generated))[0]  # says where, never what
    password = (tmp_path / "admin-password").read_text().strip()
    assert password not in str(await seed(generated))
    await login(api, generated.admin_email, password)


@pytest.fixture
async def alone(services: ServiceUrls, base_settings: Settings) -> AsyncIterator[TestClient]:
    """An app on a database of its own, where the only admin can be the test's."""
    async with fresh_database(services) as urls:
        app = await create_app(settings_for(urls, base_settings))
        async with TestClient(TestServer(app)) as client:
            yield client


async def test_the_last_active_admin_cannot_be_removed(alone: TestClient) -> None:
    only = await sign_up(alone, "admin")
    url = f"/api/v1/admin/users/{only.id}"
    for change in (
        alone.put(f"{url}/roles", json={"roles": ["staff"]}, headers=only.headers),
        alone.patch(url, json={"active": False}, headers=only.headers),
    ):
        response = await change
        assert response.status == 409
        assert "no active admin" in (await response.json())["detail"]
    assert await me_status(alone, only.access_token) == 200  # nothing changed

    second = await sign_up(alone, "admin")
    demoted = await alone.put(f"{url}/roles", json={"roles": ["staff"]}, headers=second.headers)
    assert demoted.status == 200  # another admin remains
