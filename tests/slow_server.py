"""A real server process with one slow route, for the graceful-shutdown test.

It runs the production `run_server` with the production app plus `/test/slow`, so what the
test sees is the shipped shutdown sequence.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import uvloop
from aiohttp import web
from pydantic import Field

from config import Settings, load_settings
from observability.logging import configure_logging
from server.app import create_app
from server.routing import PUBLIC, Input, Routes, install
from server.runner import run_server

routes = Routes("/test", tag="test")


class Slow(Input):
    seconds: Annotated[float, Field(ge=0, le=10)]


@routes.get("/slow", access=PUBLIC)
async def slow(request: web.Request, query: Slow) -> dict[str, float]:
    await asyncio.sleep(query.seconds)
    return {"slept": query.seconds}


async def with_slow_route(settings: Settings) -> web.Application:
    app = await create_app(settings)
    install(app, routes)
    return app


if __name__ == "__main__":
    settings = load_settings()
    configure_logging(settings.log_level)
    uvloop.run(run_server(settings, with_slow_route))
