"""Product images: staff attach an uploaded image (`PUT`), anyone fetches it or its thumbnail.

PUT    /api/v1/products/{product_id}/image            {"file_id"} -> the image's state
GET    /api/v1/products/{product_id}/image            the image (streamed, ranges, ETag)
GET    /api/v1/products/{product_id}/image/thumbnail  the thumbnail (404 until made)
GET    /api/v1/products/{product_id}/image/status     the image, its thumbnail job's state
DELETE /api/v1/products/{product_id}/image            detach (the file itself stays)
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

import pydantic
from aiohttp import web
from pydantic import Field

from actors.files import FILES
from actors.product_images import (
    PRODUCT_IMAGES,
    AttachImage,
    DescribeImage,
    DetachImage,
    ImageFile,
    ProductImage,
    ThumbnailState,
)
from actors.runtime import deadline_scope
from server.downloads import serve
from server.routes.files import principal_of
from server.routes.jobs import JobView
from server.routing import PUBLIC, Input, Routes
from server.state import ACTORS, PRINCIPAL, SETTINGS

routes = Routes("/api/v1", tag="catalog")

ProductId = Annotated[int, pydantic.Field(ge=1, le=2**63 - 1)]


class Attach(Input):
    file_id: UUID


class Thumbnail(pydantic.BaseModel):
    state: ThumbnailState = Field(
        description="the thumbnail job's progress: `retrying` reads `running`; `dead` and "
        "`cancelled` read `failed` (the job's own state is `job.state`)"
    )
    error: str | None = Field(
        description="why it failed (the job's error), for those who may see its job"
    )
    url: str | None = Field(description="the thumbnail, once made")
    job: JobView | None = Field(
        description="the job making the thumbnail, as `GET /api/v1/jobs/{id}` shows it (follow "
        "it there or over `/api/v1/ws` by its id), for its owner (who attached the image) and "
        "staff; null for anyone else, and once its record is gone after its retention"
    )

    @classmethod
    def of(cls, image: ProductImage, url: str) -> Thumbnail:
        job = image.job
        failed = image.thumbnail == "failed"
        return cls(
            state=image.thumbnail,
            error=job.error if failed and job is not None else None,
            url=f"{url}/thumbnail" if image.thumbnail == "succeeded" else None,
            job=None if job is None else JobView.of(job),
        )


class Image(pydantic.BaseModel):
    product_id: int
    file_id: UUID
    content_type: str
    url: str
    thumbnail: Thumbnail

    @classmethod
    def of(cls, image: ProductImage) -> Image:
        url = f"/api/v1/products/{image.product_id}/image"
        return cls(
            product_id=image.product_id,
            file_id=image.file_id,
            content_type=image.content_type,
            url=url,
            thumbnail=Thumbnail.of(image, url),
        )


@routes.put("/products/{product_id}/image", access="catalog:write")
async def attach_image(request: web.Request, product_id: ProductId, body: Attach) -> Image:
    """Show an uploaded image for a product; a job makes its thumbnail.

    Any image the caller may see (staff: anyone's). The thumbnail is made by a `thumbnail` job
    owned by the caller, in `thumbnail.job`: follow it at `GET /api/v1/jobs/{id}` or over
    `/api/v1/ws` by its id. Attaching again (even the same file) submits a new job."""
    image = await request.app[ACTORS][PRODUCT_IMAGES].ask(
        AttachImage(principal_of(request), product_id, body.file_id)
    )
    return Image.of(image)


@routes.get("/products/{product_id}/image/status", access=PUBLIC)
async def image_status(request: web.Request, product_id: ProductId) -> Image:
    """A product's image and how its thumbnail is coming along.

    Anyone sees the thumbnail's state; with a bearer token of the job's owner (who attached
    the image) or of staff, also its job (`thumbnail.job`) and, when it failed, the error."""
    describe = DescribeImage(product_id, request.get(PRINCIPAL))
    return Image.of(await request.app[ACTORS][PRODUCT_IMAGES].ask(describe))


@routes.get("/products/{product_id}/image", access=PUBLIC, long_lived=True)
async def product_image(request: web.Request, product_id: ProductId) -> web.StreamResponse:
    """A product's image."""
    return await _serve(request, product_id, "image")


@routes.get("/products/{product_id}/image/thumbnail", access=PUBLIC, long_lived=True)
async def product_thumbnail(request: web.Request, product_id: ProductId) -> web.StreamResponse:
    """A product's image, as a thumbnail (WebP)."""
    return await _serve(request, product_id, "thumbnail")


@routes.delete("/products/{product_id}/image", access="catalog:write", status=204)
async def detach_image(request: web.Request, product_id: ProductId) -> web.Response:
    """Stop showing an image for a product (the uploaded file stays)."""
    await request.app[ACTORS][PRODUCT_IMAGES].ask(DetachImage(product_id))
    return web.Response(status=204)


async def _serve(
    request: web.Request, product_id: int, variant: Literal["image", "thumbnail"]
) -> web.StreamResponse:
    actors = request.app[ACTORS]
    with deadline_scope(request.app[SETTINGS].request_timeout):
        file = await actors[PRODUCT_IMAGES].ask(ImageFile(product_id, variant))
    return await serve(request, actors[FILES], file)
