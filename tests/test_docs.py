"""The API description: a valid OpenAPI 3.1 document covering every route, docs that load
nothing from elsewhere, and problem types that explain themselves."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from server.routing import ENDPOINTS, PUBLIC


async def test_openapi_describes_every_route(api: TestClient) -> None:
    response = await api.get("/api/v1/openapi.json")
    assert response.status == 200
    spec = await response.json()
    validate(spec)  # raises if it is not a valid OpenAPI 3.1 document
    assert spec["openapi"] == "3.1.0"
    described = [e for e in api.app[ENDPOINTS] if e.extra.get("include_in_schema", True)]
    assert len(described) > 20
    for endpoint in described:
        operation = spec["paths"][endpoint.path][endpoint.method.lower()]
        assert operation["summary"], endpoint.path
        if endpoint.access == PUBLIC:
            assert operation["security"] == []
        else:
            assert operation["security"] == [{"bearer": []}]
            assert operation["x-permission"] == endpoint.access
            assert {"401", "403"} <= operation["responses"].keys()
    assert "/docs" not in spec["paths"]


async def test_openapi_carries_the_models(api: TestClient) -> None:
    spec = await (await api.get("/api/v1/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    place = spec["paths"]["/api/v1/orders"]["post"]
    assert place["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/NewOrder"
    )
    assert [p["name"] for p in place["parameters"]] == ["Idempotency-Key"]
    assert {"X-Read-After", "Idempotent-Replayed"} <= place["responses"]["201"]["headers"].keys()
    assert "409" in place["responses"]
    product = schemas["Product"]
    assert product["properties"]["price_minor"]["type"] == "integer"  # money is never a float
    new_product = schemas["NewProduct"]
    assert new_product["additionalProperties"] is False  # unknown fields are refused
    listing = spec["paths"]["/api/v1/products"]["get"]
    assert {"q", "min_price", "max_price", "in_stock", "sort", "cursor", "limit"} <= {
        p["name"] for p in listing["parameters"]
    }
    by_id = spec["paths"]["/api/v1/products/{product_id}"]["get"]
    assert by_id["parameters"][0] | {"schema": None} == {
        "name": "product_id",
        "in": "path",
        "required": True,
        "schema": None,
    }
    problem = schemas["ProblemDetails"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])
    assert "/problems/out-of-stock" in spec["info"]["description"]


async def test_docs_work_with_nothing_from_elsewhere(api: TestClient) -> None:
    page = await api.get("/docs")
    assert page.status == 200
    assert page.content_type == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "http" not in csp
    assert "script-src 'self'" in csp
    html = await page.text()
    assert "<script>" not in html  # no inline script: the CSP would refuse it
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls
    for url in urls:
        assert url.startswith("/"), url
        asset = await api.get(url)
        assert asset.status == 200, url
        assert len(await asset.read()) > 20, url
    start = await (await api.get("/docs/start.js")).text()
    assert "/api/v1/openapi.json" in start
    assert "validatorUrl: null" in start
    for bad in ("/docs/..%2f..%2fsetup.cfg", "/docs/index.html", "/docs/swagger-ui.js.map"):
        assert (await api.get(bad)).status == 404, bad


async def test_problem_types_are_described(api: TestClient) -> None:
    response = await api.get("/api/v1/products/0")
    assert response.status == 422
    kind = (await response.json())["type"]
    described = await api.get(kind)
    assert described.status == 200
    assert (await described.json())["status"] == 422
    stock = await (await api.get("/problems/out-of-stock")).json()
    assert stock["status"] == 409
    assert "stock" in stock["description"]
    assert (await api.get("/problems/no-such-thing")).status == 404
