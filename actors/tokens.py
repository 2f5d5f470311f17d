"""Access tokens: short-lived JWTs signed with a key ring.

* Every token names its key in the `kid` header. The ring's first key signs; every key in it
  verifies, so a new key can be put first while tokens signed by the old one run out.
* The algorithm is pinned by configuration: `alg: none`, and any algorithm other than the
  configured one, is refused before the signature is even looked at.
* Keys come from `JWT_KEYS`. Outside production, when it is unset, one key is generated once
  into the state folder (mode 0600) and shared by every process that uses that folder; a
  secret is never written into the code.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from pydantic import SecretStr

from actors.access import ROLES
from actors.errors import Unauthenticated
from config import ConfigError, Settings
from config.settings import signing_key

GENERATED_KEYS = "jwt-keys"


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says."""

    user_id: str
    roles: frozenset[str]
    token_id: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    token_id: str
    expires_at: int


class KeyRing:
    """Signing keys by id; the first one signs."""

    def __init__(self, keys: list[tuple[str, bytes]], algorithm: str) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self.algorithm = algorithm
        self.signing_kid, self.signing_key = keys[0]
        self._keys = dict(keys)

    def get(self, kid: Any) -> bytes | None:
        return self._keys.get(kid) if isinstance(kid, str) else None


class AccessTokens:
    """Issues and verifies access tokens."""

    def __init__(self, ring: KeyRing, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        self.ring = ring
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessTokens:
        return cls(
            load_key_ring(settings),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_seconds=settings.access_token_seconds,
        )

    def issue(self, user_id: str, roles: frozenset[str] | list[str]) -> IssuedToken:
        now = int(time.time())
        token_id = uuid.uuid4().hex
        expires_at = now + self.ttl_seconds
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id,
            "roles": sorted(roles),
            "jti": token_id,
            "iat": now,
            "nbf": now,
            "exp": expires_at,
        }
        token = jwt.encode(
            claims,
            self.ring.signing_key,
            algorithm=self.ring.algorithm,
            headers={"kid": self.ring.signing_kid},
        )
        return IssuedToken(token, token_id, expires_at)

    def verify(self, token: str) -> AccessClaims:
        """The token's claims, or `Unauthenticated` saying briefly what is wrong with it."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("malformed token") from None
        if header.get("alg") != self.ring.algorithm:
            raise Unauthenticated("token algorithm not accepted")
        key = self.ring.get(header.get("kid"))
        if key is None:
            raise Unauthenticated("token signed with an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self.ring.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "jti", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.InvalidTokenError:
            raise Unauthenticated("invalid token") from None
        return _claims(claims)


def _claims(claims: dict[str, Any]) -> AccessClaims:
    subject, token_id, roles = claims.get("sub"), claims.get("jti"), claims.get("roles")
    if (
        not isinstance(subject, str)
        or not isinstance(token_id, str)
        or not isinstance(roles, list)
        or not all(isinstance(role, str) and role in ROLES for role in roles)
    ):
        raise Unauthenticated("invalid token")
    return AccessClaims(subject, frozenset(roles), token_id, int(claims["exp"]))


def load_key_ring(settings: Settings) -> KeyRing:
    """The configured keys; outside production, a generated key when none is configured."""
    keys = settings.signing_keys
    if not keys:
        if settings.app_env == "prod":
            raise ConfigError("JWT_KEYS must be set when APP_ENV=prod")
        keys = [_generated_key(Path(settings.state_dir) / GENERATED_KEYS)]
    return KeyRing(keys, settings.jwt_algorithm)


def _generated_key(path: Path) -> tuple[str, bytes]:
    """Read the key in `path`, creating it first if absent. Several processes may race here:
    the file appears whole or not at all (written aside, then hard-linked into place)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = f"dev-{secrets.token_hex(4)}:{secrets.token_urlsafe(64)}"
        aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(entry + "\n")
        try:
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
        finally:
            aside.unlink()
    return signing_key(SecretStr(path.read_text().strip()))
