"""The application factory: configuration, resources, actors, routes, middleware.

Resources and actors are async contexts in `cleanup_ctx`: the code before each `yield` runs at
start-up in list order, the code after it at shutdown in reverse, so both read top-down here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp_cors
from aiohttp import web
from aiohttp.typedefs import Middleware

from actors import ActorSystem
from actors.accounts import ACCOUNTS, Accounts
from actors.catalog import CATALOG, Catalog
from actors.files import FILES, Files
from actors.health import HEALTH, HealthMonitor
from actors.identity import Principal
from actors.jobs import JOBS, JobsActor
from actors.orders import ORDERS, Orders
from actors.product_images import PRODUCT_IMAGES, ProductImages
from actors.sessions import SESSIONS, Authenticate, Sessions
from actors.tokens import AccessTokens
from config import Settings
from observability import tracing
from observability.exporter import sampled
from observability.logging import AccessLog
from server.access import authenticate, authorize, check_routes
from server.live import LIVE, LiveHub
from server.middleware import limits, observe, problem_details, security_headers, traced
from server.ratelimit import LIMITER, RateLimiter, quota_headers, rate_limit
from server.routes import (
    admin,
    auth,
    catalog,
    docs,
    files,
    jobs,
    live,
    operations,
    orders,
    product_images,
)
from server.routing import install
from server.state import ACTORS, LIFECYCLE, SETTINGS, Lifecycle
from storage.postgres import ReplicaSet

EXPOSED_HEADERS = (
    "X-Request-ID",
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "X-Read-After",
    "Idempotent-Replayed",
)
ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "X-Request-ID",
    "X-Read-After",
    "Idempotency-Key",
    "traceparent",  # a browser's trace, continued by the request span
    "tracestate",
)


async def create_app(settings: Settings) -> web.Application:
    access_log = AccessLog() if settings.access_log else None
    limiter = RateLimiter(settings) if settings.rate_limit_enabled else None
    app = web.Application(
        middlewares=[
            *tracing_middleware(),
            observe(access_log),
            problem_details(retry_after=settings.retry_after_seconds),
            authenticate(timeout=settings.request_timeout),
            *([rate_limit(limiter)] if limiter else []),
            authorize(),
            limits(timeout=settings.request_timeout, max_body=settings.max_body_bytes),
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[LIFECYCLE] = Lifecycle()
    app[ACTORS] = ActorSystem(
        mailbox_size=settings.actor_mailbox_size, stop_timeout=settings.shutdown_timeout
    )
    app.cleanup_ctx.append(sampled)
    if limiter is not None:
        app[LIMITER] = limiter
        app.cleanup_ctx.append(rate_limiter)
        app.on_response_prepare.append(quota_headers())
    app.cleanup_ctx.append(actors)
    app.cleanup_ctx.append(live_updates)
    app.on_shutdown.append(_close_websockets)
    if access_log is not None:
        app.on_cleanup.append(lambda app: _flush(access_log))

    install(app, operations.routes)
    install(app, auth.routes, admin.routes, catalog.routes, orders.routes)
    install(app, files.routes, product_images.routes)
    install(app, docs.routes)
    docs.setup(app)
    install(app, jobs.routes, live.routes)
    app.on_startup.append(check_routes)
    allow_cors(app, settings.cors_origins)
    app.on_response_prepare.append(security_headers(hsts_seconds=settings.hsts_seconds))
    return app


async def rate_limiter(app: web.Application) -> AsyncIterator[None]:
    """The limiter's Redis client, open while the app runs."""
    async with app[LIMITER].connected():
        yield


async def actors(app: web.Application) -> AsyncIterator[None]:
    """Start the actors in dependency order; stop them, draining, in reverse."""
    settings = app[SETTINGS]
    replicas = ReplicaSet(len(settings.replica_dsns), settings.replica_max_lag_seconds)
    async with app[ACTORS] as system:
        await system.spawn(HEALTH, lambda: HealthMonitor(settings, replicas), concurrency=4)
        tokens = AccessTokens.from_settings(settings)
        sessions = await system.spawn(
            SESSIONS, lambda: Sessions(settings, tokens), concurrency=settings.redis_pool_size
        )
        await system.spawn(
            ACCOUNTS,
            lambda: Accounts(settings, tokens, replicas, sessions),
            concurrency=settings.db_pool_size,
        )
        catalog = await system.spawn(  # cache hits wait on no pool; misses are bounded by them
            CATALOG,
            lambda: Catalog(settings, replicas, sessions),
            concurrency=settings.db_pool_size + settings.redis_pool_size,
        )
        await system.spawn(  # a batch of orders takes one connection: let batches form
            ORDERS,
            lambda: Orders(settings, replicas, sessions, catalog),
            concurrency=settings.db_pool_size * 4,
        )
        await system.spawn(
            FILES,
            lambda: Files(settings, replicas),
            concurrency=settings.db_pool_size + settings.files_max_uploads,
        )
        await system.spawn(JOBS, lambda: JobsActor(settings, replicas), concurrency=128)
        await system.spawn(  # after the jobs actor: thumbnails are jobs
            PRODUCT_IMAGES,
            lambda: ProductImages(settings, replicas, system[FILES], system[JOBS]),
            concurrency=max(2, settings.db_pool_size // 2),
        )
        yield


async def live_updates(app: web.Application) -> AsyncIterator[None]:
    """Job events pushed to WebSocket clients (after the actors: it asks the jobs actor)."""
    async with LiveHub(app[SETTINGS], _authenticator(app)).running() as hub:
        app[LIVE] = hub
        yield


async def _close_websockets(app: web.Application) -> None:
    await app[LIVE].close_all()


def _authenticator(app: web.Application) -> Callable[[str], Awaitable[Principal]]:
    """Verifies a WebSocket's first-message token as the HTTP middleware does a bearer header."""

    async def authenticate(token: str) -> Principal:
        session = await app[ACTORS][SESSIONS].ask(Authenticate(token))
        return session.principal

    return authenticate


async def _flush(access_log: AccessLog) -> None:
    access_log.flush()


def tracing_middleware() -> list[Middleware]:
    """The request span, when this process traces (`observability.instrumentation`)."""
    return [] if tracing.tracer is None else [traced()]


def allow_cors(app: web.Application, origins: list[str]) -> None:
    """Answer cross-origin requests from the configured origins only (none by default)."""
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=True,
        expose_headers=EXPOSED_HEADERS,
        allow_headers=ALLOWED_HEADERS,
        max_age=600,
    )
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
    for route in list(app.router.routes()):
        cors.add(route)
