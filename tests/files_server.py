"""A real server process for the file memory test: the production app and runner, with the
test stand-in for authentication (`X-Test-Principal`)."""

from __future__ import annotations

import uvloop
from aiohttp import web

from config import Settings, load_settings
from observability.logging import configure_logging
from server.app import create_app
from server.runner import run_server
from tests.files_support import identity_from_header


async def with_test_identity(settings: Settings) -> web.Application:
    app = await create_app(settings)
    app.middlewares.append(identity_from_header)
    return app


if __name__ == "__main__":
    settings = load_settings()
    configure_logging(settings.log_level)
    uvloop.run(run_server(settings, with_test_identity))
