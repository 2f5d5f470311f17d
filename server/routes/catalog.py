"""The catalog over HTTP: browse and read products (anyone), change them (staff)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field, StringConstraints, ValidationInfo, field_validator, model_validator

from actors.access import permits
from actors.catalog import (
    CATALOG,
    CreateProduct,
    DeleteProduct,
    GetProduct,
    Listing,
    ListProducts,
    Product,
    UpdateProduct,
)
from actors.errors import PermissionDenied
from actors.pages import Page, decode_cursor, foreign_cursor, integer, text
from server.fields import Cursor, Id, Limit, Name
from server.freshness import READ_AFTER, written
from server.routing import PUBLIC, Input, Reply, Routes
from server.state import ACTORS, PRINCIPAL
from storage import catalog

routes = Routes("/api/v1", tag="catalog")

WRITE = "catalog:write"

Sku = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Description = Annotated[str, Field(max_length=5000)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
# Money is an integer number of minor units (cents). Strict: 9.99 or "999" is refused.
MinorUnits = Annotated[int, Field(strict=True, ge=0, le=10**12)]
Stock = Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)]
SortName = Literal["newest", "oldest", "price_asc", "price_desc", "name_asc", "name_desc"]


class NewProduct(Input):
    sku: Sku
    name: Name
    description: Description = ""
    price_minor: MinorUnits
    currency: Currency
    stock: Stock
    active: bool = True


class ProductChanges(Input):
    name: Name | None = None
    description: Description | None = None
    price_minor: MinorUnits | None = None
    currency: Currency | None = None
    stock: Stock | None = None
    active: bool | None = None

    @model_validator(mode="after")
    def _something(self) -> ProductChanges:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        if any(getattr(self, name) is None for name in self.model_fields_set):
            raise ValueError("fields cannot be set to null")
        return self


class ProductQuery(Input):
    q: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
        | None
    ) = None
    min_price: Annotated[int, Field(ge=0, le=10**12)] | None = None
    max_price: Annotated[int, Field(ge=0, le=10**12)] | None = None
    in_stock: bool | None = None
    currency: Currency | None = None
    include_inactive: bool = False
    sort: SortName = "newest"
    cursor: Cursor | None = None
    limit: Limit = 20

    @field_validator("max_price")
    @classmethod
    def _range(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min_price")
        if value is not None and low is not None and low > value:
            raise ValueError("max_price is below min_price")
        return value


@routes.get("/products", access=PUBLIC, errors={403: "`include_inactive` without staff rights"})
async def list_products(request: web.Request, query: ProductQuery) -> Reply[Page[Product]]:
    """Products, a page at a time (keyset: follow `next_cursor`), filtered by name text
    (`q`), price range in minor units, stock and currency, in one of several orders.
    `include_inactive` is for staff."""
    if query.include_inactive:
        principal = request.get(PRINCIPAL)
        if principal is None or not permits(principal.roles, WRITE):
            raise PermissionDenied("include_inactive is for staff")
    listing = Listing(
        filters=catalog.Filters(
            text=query.q,
            min_price=query.min_price,
            max_price=query.max_price,
            in_stock=query.in_stock,
            currency=query.currency,
            include_inactive=query.include_inactive,
        ),
        sort=query.sort,
        after=_position(query) if query.cursor else None,
        limit=query.limit,
        key=query.model_dump_json(),
    )
    return Reply(await request.app[ACTORS][CATALOG].ask(ListProducts(listing)))


@routes.get("/products/{product_id}", access=PUBLIC)
async def get_product(request: web.Request, product_id: Id) -> Reply[Product]:
    """One product."""
    return Reply(await request.app[ACTORS][CATALOG].ask(GetProduct(product_id)))


@routes.post(
    "/products",
    access=WRITE,
    status=201,
    response_headers=READ_AFTER,
    errors={409: "A live product has this SKU"},
)
async def create_product(request: web.Request, body: NewProduct) -> Reply[Product]:
    """Add a product. A SKU that a live product already has is 409."""
    message = CreateProduct(request[PRINCIPAL], body.model_dump())
    return written(await request.app[ACTORS][CATALOG].ask(message))


@routes.patch("/products/{product_id}", access=WRITE, response_headers=READ_AFTER)
async def update_product(
    request: web.Request, product_id: Id, body: ProductChanges
) -> Reply[Product]:
    """Change some of a product's fields (`stock` sets the count on hand)."""
    message = UpdateProduct(request[PRINCIPAL], product_id, body.model_dump(exclude_unset=True))
    return written(await request.app[ACTORS][CATALOG].ask(message))


@routes.delete("/products/{product_id}", access=WRITE, status=204, response_headers=READ_AFTER)
async def delete_product(request: web.Request, product_id: Id) -> Reply[None]:
    """Remove a product from the catalog (its orders keep it)."""
    result = await request.app[ACTORS][CATALOG].ask(DeleteProduct(request[PRINCIPAL], product_id))
    return written(result)


def _position(query: ProductQuery) -> tuple[Any, int]:
    """The `(sort value, id)` a cursor continues from; it must come from the same order."""
    assert query.cursor is not None
    value_type = text if catalog.SORTS[query.sort].column == "name" else integer
    sort, value, product_id = decode_cursor(query.cursor, (text, value_type, integer))
    if sort != query.sort:
        raise foreign_cursor()
    return value, product_id
