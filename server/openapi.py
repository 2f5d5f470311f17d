"""The OpenAPI 3.1 document, generated from the declared endpoints and their models.

Everything comes from `server.routing`: paths and methods, summaries and descriptions (the
handlers' docstrings), who may call (`access`: the bearer scheme and the permission with the
roles that hold it), path, query and header parameters, request bodies and responses (their
pydantic models, as JSON Schema 2020-12, which OpenAPI 3.1 uses as is), and the errors each
route can answer. Nothing is written twice, so the description cannot drift from the code.

Routes may add to their declaration (`**extra` of `Routes.route`):
`headers={name: description}` (request headers), `response_headers={name: description}`,
`errors={status: description}`, and `include_in_schema=False`.
"""

from __future__ import annotations

import inspect
import re
from http import HTTPStatus
from typing import Any

import pydantic
from aiohttp import web

from actors.access import PERMISSIONS
from server.problems import PROBLEMS, ProblemDetails
from server.routing import PUBLIC, Endpoint

REF = "#/components/schemas/{model}"
_PLACEHOLDER = re.compile(r"\{(\w+)(?::[^}]*)?\}")


def document(endpoints: list[Endpoint], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI document describing `endpoints`."""
    described = [e for e in endpoints if e.extra.get("include_in_schema", True)]
    schemas, definitions = _schemas(described)
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in described:
        path = _PLACEHOLDER.sub(r"{\1}", endpoint.path)
        paths.setdefault(path, {})[endpoint.method.lower()] = _operation(
            endpoint, schemas, definitions
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": _description()},
        "tags": [{"name": tag} for tag in sorted({e.tag for e in described if e.tag})],
        "paths": paths,
        "components": {
            "schemas": definitions,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from `POST /api/v1/auth/login`.",
                }
            },
        },
    }


def _schemas(
    endpoints: list[Endpoint],
) -> tuple[dict[tuple[str, str], Any], dict[str, Any]]:
    """Every model's JSON Schema, generated together so that shared models become one
    component (`TypeAdapter.json_schemas` also tells apart a model's input and output forms)."""
    inputs: list[tuple[str, Any, pydantic.TypeAdapter[Any]]] = [
        ("problem", "serialization", pydantic.TypeAdapter(ProblemDetails))
    ]
    for e in endpoints:
        for kind, model in (("body", e.body), ("query", e.query), ("path", e.path_params)):
            if model is not None:
                inputs.append((f"{e.name}:{kind}", "validation", pydantic.TypeAdapter(model)))
        if _has_schema(e.response):
            inputs.append((f"{e.name}:response", "serialization", pydantic.TypeAdapter(e.response)))
    mapping, definitions = pydantic.TypeAdapter.json_schemas(inputs, ref_template=REF)
    return {key: schema for (key, _), schema in mapping.items()}, definitions.get("$defs", {})


def _has_schema(response: Any) -> bool:
    if response is None or response is type(None):
        return False
    return not (inspect.isclass(response) and issubclass(response, web.StreamResponse))


def _operation(
    endpoint: Endpoint, schemas: dict[str, Any], definitions: dict[str, Any]
) -> dict[str, Any]:
    doc = inspect.getdoc(endpoint.handler) or ""
    operation: dict[str, Any] = {
        "operationId": endpoint.name,
        "summary": _summary(doc) or endpoint.name.replace("_", " "),
        "description": doc + _access_note(endpoint.access),
        "tags": [endpoint.tag] if endpoint.tag else [],
        "security": [] if endpoint.access == PUBLIC else [{"bearer": []}],
        "parameters": [
            *_parameters(endpoint, "path", schemas, definitions),
            *_parameters(endpoint, "query", schemas, definitions),
            *(
                {
                    "name": name,
                    "in": "header",
                    "required": False,
                    "description": text,
                    "schema": {"type": "string"},
                }
                for name, text in endpoint.extra.get("headers", {}).items()
            ),
        ],
        "responses": _responses(endpoint, schemas),
    }
    if endpoint.access != PUBLIC:
        operation["x-permission"] = endpoint.access
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas[f"{endpoint.name}:body"]}},
        }
    return operation


def _summary(doc: str) -> str:
    """The first sentence of the first paragraph."""
    paragraph = " ".join(doc.split("\n\n", 1)[0].split())
    sentence, dot, _ = paragraph.partition(". ")
    return sentence.rstrip(".") if dot or paragraph.endswith(".") else paragraph


def _access_note(access: str) -> str:
    if access == PUBLIC:
        return ""
    roles = ", ".join(sorted(PERMISSIONS.get(access, ())))
    return f"\n\nNeeds a bearer token holding `{access}` (roles: {roles})."


def _parameters(
    endpoint: Endpoint, where: str, schemas: dict[str, Any], definitions: dict[str, Any]
) -> list[dict[str, Any]]:
    key = f"{endpoint.name}:{where}"
    if key not in schemas:
        return []
    model = _resolve(schemas[key], definitions)
    required = set(model.get("required", ()))
    return [
        {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": {k: v for k, v in schema.items() if k != "title"},
        }
        for name, schema in model.get("properties", {}).items()
    ]


def _resolve(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return definitions[ref.rsplit("/", 1)[-1]] if ref else schema


def _responses(endpoint: Endpoint, schemas: dict[str, Any]) -> dict[str, Any]:
    success: dict[str, Any] = {"description": HTTPStatus(endpoint.status).phrase}
    schema = schemas.get(f"{endpoint.name}:response")
    if schema is not None and endpoint.status != 204:
        success["content"] = {"application/json": {"schema": schema}}
    if headers := endpoint.extra.get("response_headers"):
        success["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    responses: dict[str, Any] = {str(endpoint.status): success}
    problem = {"application/problem+json": {"schema": schemas["problem"]}}
    for status, text in sorted(_errors(endpoint).items()):
        responses[str(status)] = {"description": text, "content": problem}
    responses["default"] = {"description": "Any other problem", "content": problem}
    return responses


def _errors(endpoint: Endpoint) -> dict[int, str]:
    found: dict[int, str] = {401: "A bearer token was given but is invalid, expired or revoked"}
    if endpoint.access != PUBLIC:
        found[401] = "No valid bearer token"
        found[403] = f"The token's roles do not hold `{endpoint.access}`"
    if endpoint.path_params is not None:
        found[404] = "Not found"
    if endpoint.body is not None:
        found[400] = "The body is not valid JSON"
        found[413] = "The body is too large"
        found[415] = "The body is not `application/json`"
    if endpoint.body or endpoint.query or endpoint.path_params:
        found[422] = "Invalid input: `errors` names each bad field"
    if endpoint.rate_limit != "exempt":
        found[429] = "Rate limited: see `Retry-After` and the `RateLimit` headers"
    found.update(endpoint.extra.get("errors", {}))
    return found


def _description() -> str:
    rows = "\n".join(
        f"| `/problems/{p.slug}` | {p.status} | {p.title} | {_first_line(kind)} |"
        for kind, p in PROBLEMS.items()
    )
    return f"""\
Every route of the service, generated from its declarations.

**Errors** are `application/problem+json` (RFC 9457): `type`, `title`, `status`, `detail`,
and for invalid input `errors`, a list of `{{"field", "message"}}`. Unknown fields are refused.
The problem types (each `type` can be fetched for its description):

| type | status | title | when |
|---|---|---|---|
{rows}
| `/problems/malformed-json` | 400 | Malformed JSON | the body is not JSON |

Other HTTP errors (404 for an unknown route, 405, 413, 415) use their reason phrase as type.

**Read-your-writes**: each write answers with `X-Read-After` (a WAL position). Send it back
on later requests (any process, any user) and they read data at least that fresh. The same
user's reads follow their own writes for a few seconds even without it.

**Money** is an integer count of the currency's minor unit (`price_minor: 1299` with
`currency: "EUR"` is 12.99 EUR); floats are refused.
"""


def _first_line(kind: type[BaseException]) -> str:
    return (kind.__doc__ or "").strip().split("\n")[0]


def problem_types() -> dict[str, dict[str, Any]]:
    """Each documented problem type by slug: what `GET /problems/{slug}` answers."""
    kinds: dict[str, dict[str, Any]] = {
        p.slug: {
            "type": f"/problems/{p.slug}",
            "title": p.title,
            "status": p.status,
            "description": " ".join((kind.__doc__ or "").split()),
        }
        for kind, p in PROBLEMS.items()
    }
    kinds["malformed-json"] = {
        "type": "/problems/malformed-json",
        "title": "Malformed JSON",
        "status": 400,
        "description": "The request body is not valid JSON.",
    }
    kinds["internal"] = {
        "type": "/problems/internal",
        "title": "Internal server error",
        "status": 500,
        "description": "An unexpected failure; quote the answer's request_id when reporting it.",
    }
    return kinds
