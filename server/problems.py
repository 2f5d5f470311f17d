"""Errors as RFC 9457 `application/problem+json`: the one place where each named failure
becomes an HTTP status. Clients get a status, a title, a detail and the request id; stack
traces stay in the server's log."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pydantic
from aiohttp import web

from actors import errors
from server.ratelimit import RateLimited
from storage.postgres import CONNECTION_ERRORS
from storage.redis import REDIS_UNAVAILABLE

log = logging.getLogger("backend.server")

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True, slots=True)
class Problem:
    status: int
    slug: str
    title: str
    retry: bool = False  # answer with Retry-After: the same request may succeed later
    headers: tuple[tuple[str, str], ...] = ()  # sent with every answer of this kind


# Each failure, most specific first where one derives from another.
PROBLEMS: dict[type[BaseException], Problem] = {
    errors.InvalidInput: Problem(422, "validation-failed", "Request validation failed"),
    errors.Unauthenticated: Problem(
        401,
        "unauthenticated",
        "Authentication required",
        headers=(("WWW-Authenticate", 'Bearer realm="api"'),),
    ),
    errors.PermissionDenied: Problem(403, "forbidden", "Forbidden"),
    errors.NotFound: Problem(404, "not-found", "Not found"),
    errors.Conflict: Problem(409, "conflict", "Conflict"),
    errors.OutOfStock: Problem(409, "out-of-stock", "Not enough stock"),
    errors.IllegalTransition: Problem(409, "illegal-transition", "Not allowed in this status"),
    errors.IdempotencyKeyInUse: Problem(
        409, "idempotency-key-in-use", "A request with this key is in progress", retry=True
    ),
    errors.IdempotencyKeyReused: Problem(
        422, "idempotency-key-reused", "Idempotency-Key reused for another request"
    ),
    RateLimited: Problem(429, "rate-limited", "Too many requests", retry=True),
    errors.Overloaded: Problem(503, "overloaded", "Service overloaded", retry=True),
    errors.ActorStopped: Problem(503, "unavailable", "Service unavailable", retry=True),
    errors.DependencyUnavailable: Problem(
        503, "dependency-unavailable", "A backing service is unavailable", retry=True
    ),
    errors.DeadlineExceeded: Problem(504, "deadline-exceeded", "Request took too long"),
    # files
    errors.TooLarge: Problem(413, "too-large", "Content too large"),
    errors.UnsupportedType: Problem(415, "unsupported-type", "Unsupported media type"),
    errors.Busy: Problem(503, "busy", "Too many requests of this kind in progress", retry=True),
    errors.ClientGone: Problem(400, "incomplete-request", "The request body was cut short"),
    errors.StorageUnavailable: Problem(
        503, "storage-unavailable", "File storage is unavailable", retry=True
    ),
}
_UNAVAILABLE = PROBLEMS[errors.DependencyUnavailable]
_INTERNAL = Problem(500, "internal", "Internal server error")


class FieldIssue(pydantic.BaseModel):
    field: str
    message: str


class ProblemDetails(pydantic.BaseModel):
    """An error, as RFC 9457 describes it. `type` names the kind of problem (`GET` it for a
    description); validation problems list each bad field in `errors`."""

    model_config = pydantic.ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldIssue] | None = None
    request_id: str | None = None


def problem_response(
    problem: Problem,
    detail: str,
    *,
    retry_after: int = 1,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body = ProblemDetails(
        type=f"/problems/{problem.slug}",
        title=problem.title,
        status=problem.status,
        detail=detail,
        **extra,
    )
    response = web.Response(
        body=body.__pydantic_serializer__.to_json(body, exclude_none=True),
        status=problem.status,
        content_type=PROBLEM_JSON,
        headers=headers,
    )
    if problem.retry:
        response.headers["Retry-After"] = str(retry_after)
    response.headers.extend(problem.headers)
    return response


def from_exception(
    error: BaseException, *, request_id: str | None, retry_after: int
) -> web.Response:
    """The problem response for any exception a handler raised."""
    if isinstance(error, pydantic.ValidationError):
        return _validation(error)
    if isinstance(error, web.HTTPException):
        return _http(error)
    problem = _lookup(error)
    if problem is not None:
        extra: dict[str, Any] = {}
        if isinstance(error, errors.InvalidInput):
            extra["errors"] = [{"field": e.field, "message": e.message} for e in error.errors]
        return problem_response(
            problem,
            getattr(error, "detail", ""),
            retry_after=getattr(error, "retry_after", retry_after),
            **extra,
        )
    if isinstance(error, CONNECTION_ERRORS + REDIS_UNAVAILABLE):
        log.warning("dependency unavailable: %r", error)
        return problem_response(_UNAVAILABLE, "try again shortly", retry_after=retry_after)
    log.error("unhandled error", exc_info=error)
    return problem_response(
        _INTERNAL,
        "an unexpected error occurred; quote the request id when reporting it",
        request_id=request_id,
    )


def _lookup(error: BaseException) -> Problem | None:
    for klass in type(error).__mro__:
        if klass in PROBLEMS:
            return PROBLEMS[klass]
    return None


def _validation(error: pydantic.ValidationError) -> web.Response:
    items = error.errors(include_url=False, include_input=False, include_context=False)
    if any(item["type"] == "json_invalid" for item in items):
        return problem_response(
            Problem(400, "malformed-json", "Malformed JSON"), "the request body is not valid JSON"
        )
    fields = [{"field": _field(item["loc"]), "message": item["msg"]} for item in items]
    return problem_response(
        PROBLEMS[errors.InvalidInput], f"{len(fields)} invalid field(s)", errors=fields
    )


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def _http(error: web.HTTPException) -> web.Response:
    status = error.status
    slug = error.reason.lower().replace(" ", "-")
    headers = {k: v for k, v in error.headers.items() if k.lower() in {"allow", "retry-after"}}
    detail = error.text if error.text and not error.text.startswith(f"{status}:") else error.reason
    return problem_response(Problem(status, slug, error.reason), detail, headers=headers)
