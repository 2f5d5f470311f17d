"""What the application holds, under typed keys: set in `server.app`, read by handlers."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from actors import ActorSystem
from config import Settings


@dataclass
class Lifecycle:
    """Where the process is in its life; `draining` turns readiness off before shutdown."""

    draining: bool = False


SETTINGS = web.AppKey("settings", Settings)
ACTORS = web.AppKey("actors", ActorSystem)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
