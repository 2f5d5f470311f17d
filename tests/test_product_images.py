"""Product images: staff attach an uploaded image; its thumbnail is a `thumbnail` job that a real
worker process runs; anyone fetches the image and the thumbnail."""

from __future__ import annotations

import io
import json
import secrets
import shutil
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from aiohttp.test_utils import TestClient
from PIL import Image

from storage import accounts
from storage.migrations import MIGRATIONS_DIR, migrate
from tests.conftest import eventually
from tests.files_support import CSV, png, upload
from tests.jobs_support import Jobs
from tests.people import Caller, new_email, sign_up
from tests.test_jobs_api import job_events, receive

GARBAGE_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100  # an image by its signature, not decodable


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


async def staffed_product(client: TestClient) -> tuple[Caller, int, str]:
    """A staff member, a new product, and the URL of its image."""
    staff = await sign_up(client, "staff")
    product = await new_product(client, staff.headers)
    return staff, product, f"/api/v1/products/{product}/image"


async def uploaded(client: TestClient, data: bytes, who: Caller) -> dict[str, Any]:
    response = await upload(client, data, filename="print.png", headers=who.headers)
    assert response.status == 201, await response.text()
    return await response.json()


async def status(client: TestClient, product: int, who: Caller | None = None) -> dict[str, Any]:
    response = await client.get(
        f"/api/v1/products/{product}/image/status", headers=who.headers if who else {}
    )
    assert response.status == 200, await response.text()
    return await response.json()


async def settled(client: TestClient, product: int, who: Caller) -> dict[str, Any]:
    """The image's status once its thumbnail job has finished, as `who` sees it."""
    seen: dict[str, Any] = {}

    async def finished() -> bool:
        seen.update(await status(client, product, who))
        return seen["thumbnail"]["state"] in ("succeeded", "failed")

    await eventually(finished, timeout=15)
    return seen


async def job_record(client: TestClient, job_id: str, who: Caller) -> Any:
    response = await client.get(f"/api/v1/jobs/{job_id}", headers=who.headers)
    return response.status, await response.json()


async def test_attaching_an_image_runs_a_thumbnail_job_its_attacher_and_staff_follow(
    jobs_api: TestClient, worker: Jobs
) -> None:
    staff, colleague, customer = (
        await sign_up(jobs_api, "staff"),
        await sign_up(jobs_api, "staff"),
        await sign_up(jobs_api),
    )
    product = await new_product(jobs_api, staff.headers)
    image = png(1000, 500)
    file = await uploaded(jobs_api, image, customer)  # staff attach any image they may see
    url = f"/api/v1/products/{product}/image"

    assert (await jobs_api.put(url, json={"file_id": file["id"]})).status == 401
    refused = await jobs_api.put(url, json={"file_id": file["id"]}, headers=customer.headers)
    assert refused.status == 403
    attached = await jobs_api.put(url, json={"file_id": file["id"]}, headers=staff.headers)
    body = await attached.json()
    assert attached.status == 200, body
    assert (body["url"], body["file_id"]) == (url, file["id"])
    job = body["thumbnail"]["job"]
    assert (job["type"], job["topic"], job["state"]) == ("thumbnail", "default", "queued")
    assert body["thumbnail"] | {"job": None} == {
        "state": "queued",
        "error": None,
        "url": None,
        "job": None,
    }

    async with jobs_api.ws_connect("/api/v1/ws", headers=staff.headers) as ws:  # followed by its id
        assert (await receive(ws))["type"] == "ready"
        await ws.send_json({"op": "subscribe", "jobs": [job["id"]], "since": 0})
        assert (await receive(ws))["type"] == "subscribed"
        events = await job_events(ws, job["id"])
    assert [e["state"] for e in events] == ["queued", "running", "succeeded"], events

    done = await settled(jobs_api, product, staff)
    assert done["thumbnail"]["state"] == "succeeded"
    assert done["thumbnail"]["url"] == f"{url}/thumbnail"
    code, record = await job_record(jobs_api, job["id"], staff)
    assert code == 200
    assert done["thumbnail"]["job"] == record  # the status is the job's record
    assert (record["state"], record["attempts"], record["progress"]) == ("succeeded", 1, 100)
    assert (await status(jobs_api, product, colleague))["thumbnail"]["job"] == record  # staff: all
    assert (await worker.job(UUID(job["id"])))["owner_id"] == str(staff.id)

    thumb = await jobs_api.get(f"{url}/thumbnail")  # anonymous: the catalog is public
    assert thumb.status == 200
    assert thumb.headers["Content-Type"] == "image/webp"
    with Image.open(io.BytesIO(await thumb.read())) as picture:
        assert picture.size == (320, 160)
    got = await jobs_api.get(url)
    assert (got.status, await got.read()) == (200, image)
    assert got.headers["ETag"] == f'"{file["sha256"]}"'

    # The uploader is not the job's owner: the job does not exist for them, nor for anyone
    # anonymous; they see the thumbnail's state only.
    for who in (customer, None):
        public = await status(jobs_api, product, who)
        assert public["thumbnail"] == {
            "state": "succeeded",
            "error": None,
            "url": f"{url}/thumbnail",
            "job": None,
        }
    assert (await job_record(jobs_api, job["id"], customer))[0] == 404
    async with jobs_api.ws_connect("/api/v1/ws", headers=customer.headers) as ws:
        await receive(ws)
        await ws.send_json({"op": "subscribe", "jobs": [job["id"]]})
        assert "no such job" in (await receive(ws))["detail"]

    assert (await jobs_api.delete(url, headers=staff.headers)).status == 204
    assert (await jobs_api.get(url)).status == 404
    kept = await jobs_api.get(f"/api/v1/files/{file['id']}", headers=customer.headers)
    assert kept.status == 200


async def test_an_image_that_cannot_be_decoded_fails_its_job_then_another_is_attached(
    jobs_api: TestClient, worker: Jobs
) -> None:
    staff, product, url = await staffed_product(jobs_api)
    broken = await uploaded(jobs_api, GARBAGE_PNG, staff)
    assert broken["content_type"] == "image/png"

    first = await jobs_api.put(url, json={"file_id": broken["id"]}, headers=staff.headers)
    assert first.status == 200
    job_id = (await first.json())["thumbnail"]["job"]["id"]
    failed = await settled(jobs_api, product, staff)
    _, record = await job_record(jobs_api, job_id, staff)
    assert (record["state"], record["attempts"]) == ("failed", 1)  # not retried: it cannot pass
    assert record["error"] == (
        "PermanentFailure: the image cannot be decoded: its data is not a readable image"
    )
    assert failed["thumbnail"] == {
        "state": "failed",
        "error": record["error"],
        "url": None,
        "job": record,
    }
    public = await status(jobs_api, product)
    assert (public["thumbnail"]["state"], public["thumbnail"]["error"]) == ("failed", None)
    assert (await jobs_api.get(f"{url}/thumbnail")).status == 404

    fixed = await uploaded(jobs_api, png(300, 600), staff)  # attaching again is the way to retry
    second = await jobs_api.put(url, json={"file_id": fixed["id"]}, headers=staff.headers)
    again = (await second.json())["thumbnail"]["job"]["id"]
    assert again != job_id
    done = await settled(jobs_api, product, staff)
    assert (done["file_id"], done["thumbnail"]["job"]["id"]) == (fixed["id"], again)
    assert done["thumbnail"]["state"] == "succeeded"
    with Image.open(io.BytesIO(await (await jobs_api.get(f"{url}/thumbnail")).read())) as picture:
        assert picture.size == (160, 320)


async def test_only_images_and_live_products_and_no_job_for_a_refusal(
    jobs_api: TestClient, worker: Jobs
) -> None:
    staff, _, url = await staffed_product(jobs_api)
    table = await (await upload(jobs_api, CSV, filename="a.csv", headers=staff.headers)).json()
    picture = await uploaded(jobs_api, png(), staff)

    not_image = await jobs_api.put(url, json={"file_id": table["id"]}, headers=staff.headers)
    assert not_image.status == 415
    missing = await jobs_api.put(
        "/api/v1/products/999999999/image", json={"file_id": picture["id"]}, headers=staff.headers
    )
    assert missing.status == 404
    unknown = await jobs_api.put(url, json={"file_id": str(uuid4())}, headers=staff.headers)
    assert unknown.status == 404
    assert unknown.content_type == "application/problem+json"
    assert (await jobs_api.get(url)).status == 404
    assert (await jobs_api.get(f"{url}/thumbnail")).status == 404
    assert (await jobs_api.get(f"{url}/status")).status == 404
    async with worker.db.primary() as conn:
        jobs = await conn.fetchval("SELECT count(*) FROM jobs WHERE owner_id = $1", str(staff.id))
    assert jobs == 0


async def test_a_thumbnail_job_acts_with_its_owners_roles_when_it_runs(
    jobs_api: TestClient, worker: Jobs
) -> None:
    """The files' rule, judged when the job runs: a customer's job cannot reach another's file,
    staff's can, and not once the staff member has lost the role."""
    owner, customer = await sign_up(jobs_api), await sign_up(jobs_api)
    staff, demoted = await sign_up(jobs_api, "staff"), await sign_up(jobs_api, "staff")
    picture = await uploaded(jobs_api, png(), owner)
    body = {"type": "thumbnail", "params": {"file_id": picture["id"]}}

    async def submit(who: Caller, **extra: Any) -> UUID:
        response = await jobs_api.post("/api/v1/jobs", json=body | extra, headers=who.headers)
        assert response.status == 202, await response.text()
        return UUID((await response.json())["id"])

    later = await submit(demoted, delay_seconds=1)  # accepted: staff when it was asked for
    async with worker.db.primary() as conn:
        await accounts.replace_roles(conn, demoted.id, ["customer"], None)
    for who, outcome in ((customer, "failed"), (staff, "succeeded")):
        row = await worker.until(await submit(who), "succeeded", "failed")
        assert row["state"] == outcome, row["error"]
    refused = await worker.until(later, "succeeded", "failed")
    assert (refused["state"], refused["error"]) == ("failed", "PermanentFailure: no such file")


# -- the migration from the in-process runner -------------------------------------------------


async def test_thumbnails_the_in_process_runner_left_become_jobs(
    empty_database: str, tmp_path: Path
) -> None:
    before = tmp_path / "migrations"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < "0032":
            shutil.copy(path, before)
    await migrate(empty_database, before)
    conn = await asyncpg.connect(empty_database)
    try:
        images = await _legacy_images(conn)
        await migrate(empty_database)
        rows = {
            row["thumbnail_state"]: row
            for row in await conn.fetch(
                """
                SELECT l.thumbnail_state, i.file_id AS image, j.*
                FROM unnest($1::text[], $2::bigint[]) AS l(thumbnail_state, product_id)
                JOIN product_images i USING (product_id)
                LEFT JOIN jobs j ON j.id = i.thumbnail_job
                """,
                list(images),
                list(images.values()),
            )
        }
        columns = await conn.fetchval(
            "SELECT array_agg(column_name::text) FROM information_schema.columns "
            "WHERE table_name = 'product_images'"
        )
    finally:
        await conn.close()

    assert "thumbnail_state" not in columns
    assert rows["succeeded"]["id"] is None  # made: nothing left to do, nothing to record
    for state in ("queued", "running"):  # the relay dispatches them (they are not dispatched)
        job = rows[state]
        assert (job["type"], job["topic"], job["state"], job["attempts"]) == (
            "thumbnail",
            "default",
            "queued",
            0,
        )
        assert job["owner_id"] == "7"
        assert json.loads(job["params"]) == {"file_id": str(job["image"])}
        assert job["dispatched_at"] is None
    gave_up = rows["failed"]
    assert (gave_up["state"], gave_up["error"]) == ("failed", "the image cannot be decoded: x")
    assert gave_up["finished_at"] is not None
    assert gave_up["dispatched_at"] is not None


async def _legacy_images(conn: asyncpg.Connection) -> dict[str, int]:
    """One product image in each state the in-process runner kept: state -> product id."""
    owner = await conn.fetchval(
        "INSERT INTO users (email, name, password_hash) VALUES ($1, 'T', 'x') RETURNING id",
        new_email(),
    )
    images = {}
    for state in ("queued", "running", "succeeded", "failed"):
        product = await conn.fetchval(
            "INSERT INTO products (sku, name, price_minor, currency, stock) "
            "VALUES ($1, 'P', 100, 'EUR', 1) RETURNING id",
            f"LEGACY-{state}",
        )
        file_id = uuid4()
        await conn.execute(
            "INSERT INTO files (id, owner_id, content_type, size, sha256, storage_key) "
            "VALUES ($1, $2, 'image/png', 1, $3, $4)",
            file_id,
            owner,
            bytes(32),
            f"files/{file_id}",
        )
        await conn.execute(
            "INSERT INTO product_images (product_id, file_id, thumbnail_state, thumbnail_error, "
            "attached_by) VALUES ($1, $2, $3, $4, '7')",
            product,
            file_id,
            state,
            "the image cannot be decoded: x" if state == "failed" else None,
        )
        images[state] = product
    return images
