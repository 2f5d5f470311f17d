"""Product images: staff attach an uploaded image; anyone fetches it and its thumbnail."""

from __future__ import annotations

import io
import secrets

from aiohttp.test_utils import TestClient
from PIL import Image

from tests.conftest import eventually
from tests.files_support import CSV, png, upload
from tests.people import sign_up


async def new_product(client: TestClient, headers: dict[str, str]) -> int:
    response = await client.post(
        "/api/v1/products",
        json={
            "sku": f"IMG-{secrets.token_hex(4)}",
            "name": "Framed print",
            "description": "",
            "price_minor": 4900,
            "currency": "EUR",
            "stock": 3,
        },
        headers=headers,
    )
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def test_staff_attach_an_image_and_anyone_fetches_it_and_its_thumbnail(
    client: TestClient,
) -> None:
    staff, customer = await sign_up(client, "staff"), await sign_up(client)
    product = await new_product(client, staff.headers)
    image = png(1000, 500)
    uploaded = await (
        await upload(client, image, filename="print.png", headers=staff.headers)
    ).json()
    url = f"/api/v1/products/{product}/image"

    refused = await client.put(url, json={"file_id": uploaded["id"]}, headers=customer.headers)
    assert refused.status == 403
    attached = await client.put(url, json={"file_id": uploaded["id"]}, headers=staff.headers)
    body = await attached.json()
    assert attached.status == 200, body
    assert body["url"] == url
    assert body["thumbnail"]["state"] in ("queued", "running", "succeeded")

    async def thumbnail_made() -> bool:
        status = await (await client.get(f"{url}/status")).json()
        assert status["thumbnail"]["state"] != "failed", status
        return status["thumbnail"]["state"] == "succeeded"

    await eventually(thumbnail_made)

    got = await client.get(url)  # anonymous: the catalog is public
    assert got.status == 200
    assert await got.read() == image
    assert got.headers["ETag"] == f'"{uploaded["sha256"]}"'

    thumb = await client.get(f"{url}/thumbnail")
    assert thumb.status == 200
    assert thumb.headers["Content-Type"] == "image/webp"
    with Image.open(io.BytesIO(await thumb.read())) as picture:
        assert picture.size == (320, 160)

    assert (await client.delete(url, headers=staff.headers)).status == 204
    assert (await client.get(url)).status == 404
    assert (
        await client.get(f"/api/v1/files/{uploaded['id']}", headers=staff.headers)
    ).status == 200


async def test_only_images_and_live_products(client: TestClient) -> None:
    staff = await sign_up(client, "staff")
    product = await new_product(client, staff.headers)
    table = await (await upload(client, CSV, filename="a.csv", headers=staff.headers)).json()
    picture = await (await upload(client, png(), headers=staff.headers)).json()

    not_image = await client.put(
        f"/api/v1/products/{product}/image", json={"file_id": table["id"]}, headers=staff.headers
    )
    assert not_image.status == 415
    missing = await client.put(
        "/api/v1/products/999999999/image", json={"file_id": picture["id"]}, headers=staff.headers
    )
    assert missing.status == 404
    assert (await client.get(f"/api/v1/products/{product}/image")).status == 404
    assert (await client.get(f"/api/v1/products/{product}/image/thumbnail")).status == 404
