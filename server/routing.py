"""Declarative routes.

Each endpoint states who may call it (`access`) and what it takes, through its handler's
signature: a parameter named `body` is the JSON body's model, one named `query` the query
string's model, and every other parameter after the request is a path parameter, validated
by its annotation. The return annotation is the response model. The same declarations drive
validation, access checks and the API description, so they cannot drift apart.

    routes = Routes("/api/v1", tag="catalog")

    @routes.get("/products/{product_id}", access=PUBLIC)
    async def get_product(request: web.Request, product_id: ProductId) -> Product: ...
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, get_args, get_origin

import orjson
import pydantic
from aiohttp import web
from multidict import MultiMapping

from actors.errors import FieldError, InvalidInput
from config import Settings

PUBLIC: Final = "public"

Handler = Callable[..., Awaitable[Any]]


class Input(pydantic.BaseModel):
    """Base of request models: unknown fields are refused, never silently dropped."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    name: str
    access: str
    summary: str
    tag: str
    status: int = 200
    long_lived: bool = False
    max_body: Callable[[Settings], int] | None = None
    rate_limit: str = "default"
    body: type[pydantic.BaseModel] | None = None
    query: type[pydantic.BaseModel] | None = None
    path_params: type[pydantic.BaseModel] | None = None
    response: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class Routes:
    """A group of endpoints under one prefix, registered on an app by `install`."""

    def __init__(self, prefix: str = "", *, tag: str = "") -> None:
        self.prefix = prefix
        self.tag = tag
        self.endpoints: list[Endpoint] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        access: str,
        status: int = 200,
        long_lived: bool = False,
        max_body: Callable[[Settings], int] | None = None,
        rate_limit: str = "default",
        name: str | None = None,
        **extra: Any,
    ) -> Callable[[Handler], Handler]:
        """Declare an endpoint. `access` is `PUBLIC` or the permission a caller must hold;
        `long_lived` endpoints (streams, WebSockets) are exempt from the request deadline;
        `max_body` gives the endpoint its own limit on a declared `Content-Length`, from the
        settings, in place of `MAX_BODY_BYTES` (for endpoints that stream large bodies);
        `rate_limit` names the rate-limit policy charged (or `"exempt"`)."""

        def register(handler: Handler) -> Handler:
            signature = _signature(handler)
            full_path = self.prefix + path
            self.endpoints.append(
                Endpoint(
                    method=method,
                    path=full_path,
                    handler=handler,
                    name=name or handler.__name__,
                    access=access,
                    summary=(inspect.getdoc(handler) or "").split("\n", 1)[0],
                    tag=self.tag,
                    status=status,
                    long_lived=long_lived,
                    max_body=max_body,
                    rate_limit=rate_limit,
                    body=signature.body,
                    query=signature.query,
                    path_params=_path_model(handler, full_path, signature.path),
                    response=signature.response,
                    extra=extra,
                )
            )
            return handler

        return register

    def get(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **options)

    def patch(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **options)

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self.endpoints)


ENDPOINTS = web.AppKey("endpoints", list[Endpoint])

R = typing.TypeVar("R")


@dataclass(frozen=True, slots=True)
class Reply(typing.Generic[R]):
    """A handler's answer with headers of its own: `-> Reply[Product]` declares `Product` as
    the response model, and the view sends `body` with `headers` (and `status` if given)."""

    body: R | bytes  # bytes: JSON already encoded (a cached answer)
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None


def install(app: web.Application, *groups: Routes) -> None:
    """Add every endpoint of `groups` to the app's router."""
    registered = app.setdefault(ENDPOINTS, [])
    for group in groups:
        for endpoint in group:
            app.router.add_route(
                endpoint.method, endpoint.path, _view(endpoint), name=endpoint.name
            )
            registered.append(endpoint)


def endpoint_of(request: web.Request) -> Endpoint | None:
    """The endpoint a request was routed to (None for unmatched requests and CORS preflights)."""
    return getattr(request.match_info.handler, "endpoint", None)


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response from a model, or from anything orjson encodes."""
    if isinstance(data, bytes):
        body = data
    elif isinstance(data, pydantic.BaseModel):
        body = data.__pydantic_serializer__.to_json(data)
    else:
        body = orjson.dumps(data, default=_encode)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _encode(value: Any) -> Any:
    """What orjson cannot encode itself: models nested in lists and dicts."""
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot encode {type(value).__name__}")


# -- building views -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Signature:
    body: type[pydantic.BaseModel] | None
    query: type[pydantic.BaseModel] | None
    path: dict[str, Any]
    response: Any


def _signature(handler: Handler) -> _Signature:
    hints = typing.get_type_hints(handler, include_extras=True)
    parameters = list(inspect.signature(handler).parameters)[1:]  # after the request
    return _Signature(
        body=hints.get("body") if "body" in parameters else None,
        query=hints.get("query") if "query" in parameters else None,
        path={name: hints[name] for name in parameters if name not in ("body", "query")},
        response=_unwrap_reply(hints.get("return")),
    )


def _unwrap_reply(annotation: Any) -> Any:
    return get_args(annotation)[0] if get_origin(annotation) is Reply else annotation


def _path_model(
    handler: Handler, path: str, params: dict[str, Any]
) -> type[pydantic.BaseModel] | None:
    placeholders = {
        segment[1:-1].split(":")[0] for segment in path.split("/") if segment.startswith("{")
    }
    if placeholders != set(params):
        raise TypeError(
            f"{handler.__qualname__}: path parameters {sorted(placeholders)} do not match "
            f"handler parameters {sorted(params)}"
        )
    if not params:
        return None
    fields: dict[str, Any] = {name: (annotation, ...) for name, annotation in params.items()}
    return pydantic.create_model(f"{handler.__name__}_path", __base__=Input, **fields)


def _view(endpoint: Endpoint) -> Handler:
    """The aiohttp handler: validate path, query and body, call, encode the answer."""
    body_model, query_model, path_model = endpoint.body, endpoint.query, endpoint.path_params
    list_fields = _list_fields(query_model)

    async def view(request: web.Request) -> web.StreamResponse:
        kwargs: dict[str, Any] = {}
        if path_model is not None:
            kwargs.update(_validate(path_model, dict(request.match_info)).__dict__)
        if query_model is not None:
            kwargs["query"] = _validate(query_model, _query_dict(request.query, list_fields))
        if body_model is not None:
            if request.content_type != "application/json":
                raise web.HTTPUnsupportedMediaType(text="send the body as application/json")
            kwargs["body"] = body_model.model_validate_json(await request.read())
        result = await endpoint.handler(request, **kwargs)
        if isinstance(result, web.StreamResponse):
            return result
        if result is None:
            return web.Response(status=endpoint.status)
        if isinstance(result, Reply):
            status = result.status or endpoint.status
            if result.body is None:
                return web.Response(status=status, headers=result.headers)
            return json_response(result.body, status=status, headers=result.headers)
        return json_response(result, status=endpoint.status)

    view.endpoint = endpoint  # type: ignore[attr-defined]
    view.__name__ = endpoint.handler.__name__
    return view


def _validate(model: type[pydantic.BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as error:
        raise InvalidInput(
            f"{error.error_count()} invalid parameter(s)",
            [
                FieldError(".".join(map(str, item["loc"])), item["msg"])
                for item in error.errors(include_url=False, include_input=False)
            ],
        ) from None


def _list_fields(model: type[pydantic.BaseModel] | None) -> frozenset[str]:
    if model is None:
        return frozenset()
    return frozenset(
        name for name, info in model.model_fields.items() if _is_collection(info.annotation)
    )


def _is_collection(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_collection(arg) for arg in get_args(annotation))
    return origin in (list, tuple, set, frozenset)


def _query_dict(query: MultiMapping[str], list_fields: frozenset[str]) -> dict[str, Any]:
    return {key: query.getall(key) if key in list_fields else query[key] for key in query}
