"""The API's description: the OpenAPI document, human docs that work offline, problem types.

The docs page is Swagger UI, served from the `swagger-ui-bundle-v2` package: no CDN, no
request leaves the page's own origin, and its Content-Security-Policy says exactly that.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from actors.errors import NotFound
from server.openapi import document, problem_types
from server.routing import ENDPOINTS, PUBLIC, Routes

routes = Routes(tag="docs")

TITLE: Final = "Scalable Backend API"
VERSION: Final = "1.0.0"
OPENAPI_PATH: Final = "/api/v1/openapi.json"

DOCUMENT = web.AppKey("openapi_document", dict[str, bytes])

# Everything the page loads is its own; Swagger UI styles itself inline and embeds data: images.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
PAGE: Final = b"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Scalable Backend API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/start.js"></script>
</body>
</html>
"""
# Inline scripts are refused by the CSP, so the start-up code is a file of its own.
# validatorUrl: null keeps Swagger UI from calling its online validator.
START: Final = f"""window.ui = SwaggerUIBundle({{
  url: "{OPENAPI_PATH}",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  persistAuthorization: false
}});
""".encode()
ASSETS: Final = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
CACHED: Final = {"Cache-Control": "public, max-age=86400"}


def setup(app: web.Application) -> None:
    """Make room for the document, generated on first request from the app's endpoints
    (so routes installed by any module are in it)."""
    app[DOCUMENT] = {}


@routes.get(OPENAPI_PATH, access=PUBLIC)
async def openapi(request: web.Request) -> web.Response:
    """This document: OpenAPI 3.1, generated from the routes and their models."""
    cache = request.app[DOCUMENT]
    if "json" not in cache:
        described = document(request.app[ENDPOINTS], title=TITLE, version=VERSION)
        cache["json"] = orjson.dumps(described)
    return web.Response(body=cache["json"], content_type="application/json")


@routes.get("/docs", access=PUBLIC, include_in_schema=False)
async def docs(request: web.Request) -> web.Response:
    return web.Response(
        body=PAGE, content_type="text/html", headers={"Content-Security-Policy": CSP}
    )


@routes.get("/docs/start.js", access=PUBLIC, include_in_schema=False)
async def start(request: web.Request) -> web.Response:
    return web.Response(body=START, content_type="text/javascript", headers=CACHED)


@routes.get("/docs/{asset}", access=PUBLIC, include_in_schema=False)
async def asset(request: web.Request, asset: str) -> web.StreamResponse:
    content_type = ASSETS.get(asset)
    if content_type is None:  # only the named files: no path ever reaches the disk
        raise NotFound(f"no asset {asset!r}")
    return web.FileResponse(
        swagger_ui_path / asset, headers={**CACHED, "Content-Type": content_type}
    )


@routes.get("/problems/{slug}", access=PUBLIC)
async def problem_type(request: web.Request, slug: str) -> dict[str, Any]:
    """What a problem `type` means: the description behind an error's `type` URI."""
    described = problem_types().get(slug)
    if described is None:
        raise NotFound(f"no problem type {slug!r}")
    return described
