"""What the application and each request hold, under typed keys."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from actors import ActorSystem
from actors.identity import Principal
from config import Settings


@dataclass
class Lifecycle:
    """Where the process is in its life; `draining` turns readiness off before shutdown."""

    draining: bool = False


SETTINGS = web.AppKey("settings", Settings)
ACTORS = web.AppKey("actors", ActorSystem)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)

# Set by authentication when the request carries a valid credential; absent for anonymous calls.
PRINCIPAL = web.RequestKey("principal", Principal)
