"""Every route checks its access: a walk through the app's router table.

New routes are covered by this test without being named in it: each one that is not PUBLIC
must refuse an anonymous caller (401) and every caller whose roles lack its permission (403),
and must let the roles that hold it through the check. Public routes are listed here on
purpose, so that making a route public is a decision someone wrote down.
"""

from __future__ import annotations

import uuid

import pydantic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from actors.access import PERMISSIONS, ROLES, permits
from actors.tokens import AccessTokens
from config import Settings
from server.access import check_routes
from server.app import create_app
from server.routing import ENDPOINTS, PUBLIC, Endpoint, Routes, install
from server.state import SETTINGS
from tests.people import sign_up

PUBLIC_ROUTES = {
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    # Authenticates inside the socket: a bearer header on the upgrade, or the first message.
    ("GET", "/api/v1/ws"),
    ("GET", "/api/v1/products"),
    ("GET", "/api/v1/products/{product_id}"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/start.js"),
    ("GET", "/docs/{asset}"),
    ("GET", "/problems/{slug}"),
    ("GET", "/api/v1/products/{product_id}/image"),
    ("GET", "/api/v1/products/{product_id}/image/status"),
    ("GET", "/api/v1/products/{product_id}/image/thumbnail"),
}

# Path parameter values that pass validation but name nothing that exists.
CANDIDATES = (str(2**62), str(uuid.uuid4()), "no-such-thing")


def concrete_path(endpoint: Endpoint) -> str:
    path, model = endpoint.path, endpoint.path_params
    for name in model.model_fields if model is not None else ():
        value = next(v for v in CANDIDATES if _accepts(model, name, v))
        path = path.replace(f"{{{name}}}", value)
    return path


def _accepts(model: type[pydantic.BaseModel], name: str, value: str) -> bool:
    try:
        model.model_validate(dict.fromkeys(model.model_fields, value))
    except pydantic.ValidationError as error:
        return all(e["loc"][0] != name for e in error.errors())
    return True


def test_every_route_in_the_router_is_a_declared_endpoint(api: TestClient) -> None:
    declared = {(e.method, e.path) for e in api.app[ENDPOINTS]}
    for route in api.app.router.routes():
        if route.method == "OPTIONS":  # CORS preflight, answered by aiohttp-cors
            continue
        resource = route.resource
        assert resource is not None
        assert (route.method, resource.canonical) in declared, resource.canonical


def test_public_routes_are_exactly_the_listed_ones(api: TestClient) -> None:
    public = {(e.method, e.path) for e in api.app[ENDPOINTS] if e.access == PUBLIC}
    assert public == PUBLIC_ROUTES


def test_every_permission_is_held_by_some_role() -> None:
    for permission, holders in PERMISSIONS.items():
        assert holders, permission
        assert holders <= set(ROLES), permission


async def test_every_protected_route_refuses_anonymous_and_underprivileged_callers(
    api: TestClient,
) -> None:
    user = await sign_up(api)
    tokens = AccessTokens.from_settings(api.app[SETTINGS])
    role_sets = [frozenset()] + [frozenset({role}) for role in ROLES]
    bearer = {
        roles: {"Authorization": f"Bearer {tokens.issue(str(user.id), roles).token}"}
        for roles in role_sets
    }
    protected = [e for e in api.app[ENDPOINTS] if e.access != PUBLIC]
    assert protected
    for endpoint in protected:
        path = concrete_path(endpoint)
        where = f"{endpoint.method} {endpoint.path}"
        anonymous = await api.request(endpoint.method, path)
        assert anonymous.status == 401, where
        has_body = endpoint.method != "HEAD"  # a HEAD answer has the headers only
        if has_body:
            assert (await anonymous.json())["type"] == "/problems/unauthenticated", where
        for roles in role_sets:
            response = await api.request(endpoint.method, path, headers=bearer[roles])
            if permits(roles, endpoint.access):
                assert response.status not in (401, 403), (where, roles)
            else:
                assert response.status == 403, (where, roles)
                if has_body:
                    assert (await response.json())["type"] == "/problems/forbidden", where


async def test_a_route_naming_an_undeclared_permission_stops_the_app(settings: Settings) -> None:
    app = await create_app(settings)
    routes = Routes("/probe-access")

    @routes.get("/thing", access="things:tinker")
    async def thing(request: web.Request) -> dict:
        return {}

    install(app, routes)
    with pytest.raises(ValueError, match="things:tinker"):
        await check_routes(app)
