"""Who is calling, and may they: the authentication and authorization middleware.

`authenticate` runs early, on every request: a bearer token, when present, must be valid and
not revoked (else 401, on any route), and becomes `request[PRINCIPAL]`. It also sets the
request's read floor (read-your-writes, `storage.freshness`): the larger of the client's
`X-Read-After` header and the caller's recent-write window.

`authorize` runs after it (and after the rate limiter) and enforces what each route declared
as its `access`: `PUBLIC`, or a permission from `actors.access.PERMISSIONS`. No bearer token on
a protected route is 401, a token whose roles lack the permission is 403. Because every route
goes through here with its declaration, no route can forget its check.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from actors.access import check_declared, permits
from actors.errors import PermissionDenied, Unauthenticated
from actors.sessions import SESSIONS, Authenticate
from observability.logging import user_id
from server.freshness import client_floor
from server.routing import ENDPOINTS, PUBLIC, endpoint_of
from server.state import ACTORS, PRINCIPAL
from storage.freshness import HEADER
from storage.postgres import read_floor

MAX_TOKEN_LENGTH = 4096


def authenticate(*, timeout: float) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        floor = client_floor(request.headers.get(HEADER))
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            session = await request.app[ACTORS][SESSIONS].ask(
                Authenticate(_bearer_token(authorization)), timeout=timeout
            )
            request[PRINCIPAL] = session.principal
            user_id.set(session.principal.user_id)
            floor = max(floor, session.read_floor)
        if floor:
            read_floor.set(floor)
        return await handler(request)

    return middleware


def authorize() -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = endpoint_of(request)
        if endpoint is not None and endpoint.access != PUBLIC:
            principal = request.get(PRINCIPAL)
            if principal is None:
                raise Unauthenticated("this route needs a bearer token")
            if not permits(principal.roles, endpoint.access):
                raise PermissionDenied(f"this route needs the {endpoint.access!r} permission")
        return await handler(request)

    return middleware


async def check_routes(app: web.Application) -> None:
    """At start-up: refuse to serve when a route names a permission nobody declared."""
    check_declared(e.access for e in app.get(ENDPOINTS, []) if e.access != PUBLIC)


def _bearer_token(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("send the access token as `Authorization: Bearer <token>`")
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthenticated("malformed token")
    return token
