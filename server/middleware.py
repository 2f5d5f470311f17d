"""Request middleware, outermost first:

* `traced` (only when tracing is on): a server span per request, named by its route template;
* `observe`: request id in and out, one JSON access-log line and the HTTP metrics per request;
* `problems`: any exception becomes an `application/problem+json` answer;
* `limits`: the request's time budget (passed down to actors) and its body size (a declared
  `Content-Length` over `MAX_BODY_BYTES`, or over the endpoint's own `max_body`, gets 413).

Security headers are added to every response, errors included, by `security_headers`.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from actors.deadlines import cancel_at
from actors.errors import DeadlineExceeded, TooLarge
from actors.runtime import deadline_scope
from observability import metrics, tracing
from observability.logging import AccessLog, request_id
from server import problems
from server.routing import endpoint_of
from server.state import PRINCIPAL, SETTINGS

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def traced() -> Middleware:
    """A server span per request, continuing the caller's trace (`traceparent`) if any, or
    starting one for the sampled share of requests; the others pass straight through.

    Outermost, so that the access-log line is written inside the span and carries its ids.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request.headers
        caller = propagate.extract(headers) if "traceparent" in headers else None
        if not tracing.begins(caller, root=True):
            return await handler(request)
        method = request.method if request.method in _METHODS else "OTHER"
        route = route_template(request)
        with tracing.start(
            f"{method} {route}",
            kind=SpanKind.SERVER,
            context=caller,
            attributes={"http.request.method": method, "http.route": route},
        ) as span:
            status, answered = 500, None
            try:
                response = await handler(request)
                status, answered = response.status, response.headers
                return response
            except web.HTTPException as exc:
                status, answered = exc.status, exc.headers
                raise
            except asyncio.CancelledError:
                status = 499
                raise
            finally:
                span.set_attribute("http.response.status_code", status)
                if answered is not None and "X-Request-ID" in answered:
                    span.set_attribute("request.id", answered["X-Request-ID"])
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))

    return middleware


def observe(access_log: AccessLog | None) -> Middleware:
    in_flight = metrics.child(metrics.HTTP_IN_FLIGHT)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _REQUEST_ID.match(incoming) else os.urandom(16).hex()
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        in_flight.inc()
        try:
            response = await handler(request)
            status = response.status
            response.headers["X-Request-ID"] = rid
            return response
        except web.HTTPException as exc:  # redirects and the like, passed through as they are
            status = exc.status
            exc.headers["X-Request-ID"] = rid
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away, or the server is shutting down
            raise
        finally:
            elapsed = time.perf_counter() - started
            in_flight.dec()
            method = request.method if request.method in _METHODS else "OTHER"
            route = route_template(request)
            requests, durations = metrics.http_request(method, route, str(status))
            requests.inc()
            durations.observe(elapsed)
            if access_log is not None:
                principal = request.get(PRINCIPAL)
                access_log.write(
                    f"{method} {request.path} {status}",
                    method=method,
                    path=request.path,
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                    remote=request.remote,
                    user=None if principal is None else principal.user_id,
                )
            request_id.reset(token)

    return middleware


def problem_details(*, retry_after: int) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return problems.from_exception(
                exc, request_id=request_id.get(), retry_after=retry_after
            )
        except Exception as exc:
            return problems.from_exception(
                exc, request_id=request_id.get(), retry_after=retry_after
            )

    return middleware


def limits(*, timeout: float, max_body: int) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = endpoint_of(request)
        length = request.content_length
        if length is not None:
            limit = max_body
            if endpoint is not None and endpoint.max_body is not None:
                limit = endpoint.max_body(request.app[SETTINGS])
            if length > limit:
                raise TooLarge(f"the body is {length} bytes; this endpoint takes at most {limit}")
        if endpoint is not None and endpoint.long_lived:
            return await handler(request)
        with deadline_scope(timeout) as deadline:
            expiry = cancel_at(deadline)
            try:
                with expiry:
                    return await handler(request)
            except TimeoutError:
                if expiry.expired:
                    raise DeadlineExceeded("request", f"no answer within {timeout:g}s") from None
                raise

    return middleware


def route_template(request: web.Request) -> str:
    """The matched route's template (`/api/v1/products/{product_id}`), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def security_headers(
    *, hsts_seconds: int
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """Headers equivalent to Helmet's defaults; a handler may set its own first."""
    headers = {
        "Content-Security-Policy": (
            "default-src 'self';base-uri 'self';font-src 'self' https: data:;"
            "form-action 'self';frame-ancestors 'self';img-src 'self' data:;"
            "object-src 'none';script-src 'self';script-src-attr 'none';"
            "style-src 'self' https: 'unsafe-inline';upgrade-insecure-requests"
        ),
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Origin-Agent-Cluster": "?1",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-DNS-Prefetch-Control": "off",
        "X-Download-Options": "noopen",
        "X-Frame-Options": "SAMEORIGIN",
        "X-Permitted-Cross-Domain-Policies": "none",
        "X-XSS-Protection": "0",
    }
    if hsts_seconds:
        headers["Strict-Transport-Security"] = f"max-age={hsts_seconds}; includeSubDomains"

    defaults = CIMultiDict(headers)

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        if "Content-Security-Policy" in response.headers:  # the handler chose some itself
            for name, value in headers.items():
                response.headers.setdefault(name, value)
        else:
            response.headers.extend(defaults)
        response.headers["Server"] = "backend"  # not the framework and its version

    return add
