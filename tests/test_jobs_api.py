"""Jobs over REST and WebSocket, with a real worker process behind the API."""

from __future__ import annotations

import asyncio
import csv
import io
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from config import Settings
from scheduler.events import encode
from scheduler.model import JobEvent
from server.live import LIVE
from storage.embedded import ServiceUrls
from tests.conftest import eventually, fresh_database, settings_for
from tests.files_support import png, upload
from tests.jobs_support import FAST, Jobs, env_for
from tests.people import Caller, sign_up
from tests.processes import ROOT, free_port, wait_until_serving
from tests.test_catalog import create


@pytest.fixture(scope="module")
async def job_settings(base_settings: Settings, services: ServiceUrls) -> AsyncIterator[Settings]:
    # A database of their own: other tests' apps (other Redis namespaces) must not relay these.
    async with fresh_database(services) as urls:
        yield settings_for(
            urls,
            base_settings,
            ws_send_buffer=8,
            ws_max_connections_per_user=3,
            ws_recheck_seconds=0.3,
            **FAST,
        )


async def submit(api: TestClient, who: Caller, body: dict[str, Any], **headers: str) -> Any:
    return await api.post("/api/v1/jobs", json=body, headers={**who.headers, **headers})


async def finished(api: TestClient, who: Caller, job_id: str) -> dict[str, Any]:
    state: dict[str, Any] = {}

    async def done() -> bool:
        response = await api.get(f"/api/v1/jobs/{job_id}", headers=who.headers)
        state.update(await response.json())
        return state["state"] in ("succeeded", "failed", "dead", "cancelled")

    await eventually(done, timeout=20)
    return state


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive(timeout=10)
    assert message.type == WSMsgType.TEXT, message
    return message.json()


async def job_events(ws: aiohttp.ClientWebSocketResponse, job_id: str) -> list[dict[str, Any]]:
    """This job's events until it finishes."""
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["state"] not in ("succeeded", "failed", "dead", "cancelled"):
        event = await receive(ws)
        if event.get("job_id") == job_id:
            seen.append(event)
    return seen


def as_event(wire: dict[str, Any], **changes: Any) -> JobEvent:
    """The event a WebSocket message shows (the owner, never sent, from `changes`)."""
    fields = {k: v for k, v in wire.items() if k != "type"} | {"owner_id": None} | changes
    return JobEvent(**fields)


# -- REST ------------------------------------------------------------------------------------


async def test_bad_submissions_get_clear_errors_and_write_nothing(jobs_api: TestClient) -> None:
    user = await sign_up(jobs_api)
    cases = [
        ({"type": "no_such_type"}, 422, "type"),
        ({"type": "test_steps", "params": {"steps": "many"}}, 422, "params.steps"),
        ({"type": "test_steps", "params": {"unknown": 1}}, 422, "params.unknown"),
        ({"type": "test_steps", "surprise": True}, 422, "surprise"),
        ({"type": "test_steps", "delay_seconds": -1}, 422, "delay_seconds"),
        (
            {"type": "test_steps", "params": {"steps": 1}, "delay_seconds": 9e9},
            422,
            "delay_seconds",
        ),
    ]
    for body, status, field in cases:
        response = await submit(jobs_api, user, body)
        assert response.status == status, body
        problem = await response.json()
        assert response.content_type == "application/problem+json"
        assert field in [e["field"] for e in problem["errors"]], problem
    system_only = await submit(jobs_api, user, {"type": "maintenance"})
    assert system_only.status == 403
    report = {"type": "sales_report", "params": {"from": "2026-01-01", "to": "2026-01-31"}}
    assert (await submit(jobs_api, user, report)).status == 403  # staff only
    staff = await sign_up(jobs_api, "staff")
    backwards = {"type": "sales_report", "params": {"from": "2026-02-01", "to": "2026-01-01"}}
    refused = await submit(jobs_api, staff, backwards)
    assert refused.status == 422
    assert (await refused.json())["errors"][0]["field"] == "params"
    anonymous = await jobs_api.post("/api/v1/jobs", json={"type": "test_steps"})
    assert anonymous.status == 401
    listed = await jobs_api.get("/api/v1/jobs", headers=user.headers)
    assert (await listed.json())["items"] == []


async def test_a_job_runs_and_its_owner_follows_it(jobs_api: TestClient, worker: Jobs) -> None:
    user, other = await sign_up(jobs_api), await sign_up(jobs_api)
    response = await submit(jobs_api, user, {"type": "test_steps", "params": {"steps": 3}})
    assert response.status == 202
    created = await response.json()
    assert {"id", "type", "topic", "state"} <= created.keys()
    assert (created["type"], created["topic"], created["state"]) == (
        "test_steps",
        "default",
        "queued",
    )
    assert response.headers["Location"] == f"/api/v1/jobs/{created['id']}"

    done = await finished(jobs_api, user, created["id"])
    assert done["state"] == "succeeded"
    assert (done["attempts"], done["progress"], done["error"]) == (1, 100, None)
    assert done["result"]["steps"] == 3

    hidden = await jobs_api.get(f"/api/v1/jobs/{created['id']}", headers=other.headers)
    assert hidden.status == 404
    mine = await (await jobs_api.get("/api/v1/jobs?state=succeeded", headers=user.headers)).json()
    assert [item["id"] for item in mine["items"]] == [created["id"]]
    theirs = await (await jobs_api.get("/api/v1/jobs", headers=other.headers)).json()
    assert theirs["items"] == []


async def test_idempotency_key_answers_the_same_job(jobs_api: TestClient) -> None:
    user = await sign_up(jobs_api)
    body = {"type": "test_steps", "params": {"steps": 1}, "delay_seconds": 3600}
    key = uuid.uuid4().hex
    first = await submit(jobs_api, user, body, **{"Idempotency-Key": key})
    again = await submit(jobs_api, user, body, **{"Idempotency-Key": key})
    assert (first.status, again.status) == (202, 202)
    assert (await first.json())["id"] == (await again.json())["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    changed = await submit(
        jobs_api, user, {**body, "params": {"steps": 2}}, **{"Idempotency-Key": key}
    )
    assert changed.status == 422
    listed = await (await jobs_api.get("/api/v1/jobs", headers=user.headers)).json()
    assert len(listed["items"]) == 1


async def test_dead_letter_view_and_admin_replay(jobs_api: TestClient, worker: Jobs) -> None:
    user, admin = await sign_up(jobs_api), await sign_up(jobs_api, "admin")
    body = {"type": "test_steps", "params": {"steps": 1, "pause": 0, "fail_times": 99}}
    job_id = (await (await submit(jobs_api, user, body)).json())["id"]
    dead = await finished(jobs_api, user, job_id)
    assert (dead["state"], dead["attempts"]) == ("dead", 4)
    assert dead["error"] == "RuntimeError: planned failure 4"

    view = await jobs_api.get("/api/v1/admin/jobs/dead", headers=admin.headers)
    assert job_id in [item["id"] for item in (await view.json())["items"]]
    refused = await jobs_api.post(f"/api/v1/admin/jobs/{job_id}/replay", headers=user.headers)
    assert refused.status == 403
    replay = await jobs_api.post(f"/api/v1/admin/jobs/{job_id}/replay", headers=admin.headers)
    assert replay.status == 202
    assert (await replay.json())["state"] == "queued"
    again = await finished(jobs_api, user, job_id)  # fails again: the cause is still there
    assert (again["state"], again["attempts"]) == ("dead", 4)
    twice = await jobs_api.post(f"/api/v1/jobs/{job_id}/cancel", headers=user.headers)
    assert twice.status == 409


# -- WebSocket -------------------------------------------------------------------------------


async def test_websocket_follows_a_job_live_then_replays_a_gap(
    jobs_api: TestClient, worker: Jobs
) -> None:
    user = await sign_up(jobs_api)
    async with jobs_api.ws_connect("/api/v1/ws") as ws:
        await ws.send_json({"op": "auth", "token": user.access_token})
        assert (await receive(ws))["type"] == "ready"
        await ws.send_json({"op": "subscribe", "mine": True})
        assert (await receive(ws))["type"] == "subscribed"
        body = {"type": "test_steps", "params": {"steps": 4, "pause": 0.05}}
        job_id = (await (await submit(jobs_api, user, body)).json())["id"]
        live = await job_events(ws, job_id)
    assert [e["state"] for e in live] == ["queued", "running"] + ["running"] * 4 + ["succeeded"]
    assert [e["progress"] for e in live[2:6]] == [25, 50, 75, 100]
    assert live[2]["message"] == "step 1 of 4"
    seqs = [e["seq"] for e in live]
    assert seqs == sorted(seqs)

    # Reconnect having seen only the first two events: the rest is replayed, in order.
    headers = user.headers  # this time authenticated on the upgrade
    async with jobs_api.ws_connect("/api/v1/ws", headers=headers) as ws:
        assert (await receive(ws))["type"] == "ready"
        await ws.send_json({"op": "subscribe", "jobs": [job_id], "since": seqs[1]})
        subscribed = await receive(ws)
        assert (subscribed["type"], subscribed["replayed"]) == ("subscribed", len(live) - 2)
        replayed = [await receive(ws) for _ in range(len(live) - 2)]
        assert replayed == live[2:]

        # The replayed events' announcements arriving late (the replay read them first) are
        # not sent twice; what is new still is.
        hub = jobs_api.app[LIVE]
        late = [as_event(e, owner_id=str(user.id)) for e in live[2:]]
        new = as_event(live[-1], seq=seqs[-1] + 10**6)
        await hub.redis.publish(hub.keys.events, encode([*late, new]))
        assert (await receive(ws))["seq"] == new.seq


async def test_websocket_refuses_what_it_must_and_stays_open(jobs_api: TestClient) -> None:
    user, other = await sign_up(jobs_api), await sign_up(jobs_api)
    async with jobs_api.ws_connect("/api/v1/ws") as ws:
        await ws.send_json({"op": "auth", "token": "not-a-token"})
        assert (await receive(ws))["type"] == "error"
        closed = await ws.receive(timeout=5)
        assert (closed.type, ws.close_code) == (WSMsgType.CLOSE, 4401)
    body = {"type": "test_steps", "params": {"steps": 1}, "delay_seconds": 3600}
    theirs = (await (await submit(jobs_api, other, body)).json())["id"]
    async with jobs_api.ws_connect("/api/v1/ws", headers=user.headers) as ws:
        await receive(ws)
        for bad, detail in [
            ("not json", "message"),
            ({"op": "dance"}, "op"),
            ({"op": "subscribe"}, "subscribe to jobs, mine or topics"),
            ({"op": "subscribe", "topics": ["reports"]}, "only staff"),
            ({"op": "subscribe", "jobs": [theirs]}, "no such job"),
            ({"op": "subscribe", "jobs": ["not-a-uuid"]}, "jobs.0"),
        ]:
            await (ws.send_str(bad) if isinstance(bad, str) else ws.send_json(bad))
            error = await receive(ws)
            assert error["type"] == "error", bad
            assert detail in error["detail"], (bad, error)
        await ws.send_json({"op": "subscribe", "mine": True})
        assert (await receive(ws))["type"] == "subscribed"


async def test_a_socket_closes_when_its_token_is_revoked(jobs_api: TestClient) -> None:
    user = await sign_up(jobs_api)
    async with jobs_api.ws_connect("/api/v1/ws", headers=user.headers) as ws:
        assert (await receive(ws))["type"] == "ready"
        logout = await jobs_api.post(
            "/api/v1/auth/logout", json={"refresh_token": user.refresh_token}, headers=user.headers
        )
        assert logout.status == 204
        closed = await ws.receive(timeout=10)
        assert closed.type == WSMsgType.CLOSE
        assert ws.close_code == 4401


async def test_connections_per_user_are_capped(jobs_api: TestClient) -> None:
    user = await sign_up(jobs_api)
    sockets = [await jobs_api.ws_connect("/api/v1/ws", headers=user.headers) for _ in range(3)]
    for ws in sockets:
        assert (await receive(ws))["type"] == "ready"
    extra = await jobs_api.ws_connect("/api/v1/ws", headers=user.headers)
    assert "too many" in (await receive(extra))["detail"]
    await extra.receive(timeout=5)
    assert extra.close_code == 4429
    await sockets[0].close()

    async def admitted() -> bool:
        ws = await jobs_api.ws_connect("/api/v1/ws", headers=user.headers)
        ok = (await receive(ws))["type"] == "ready"
        await ws.close()
        return ok

    await eventually(admitted)
    for ws in sockets[1:]:
        await ws.close()


async def test_a_client_that_does_not_keep_up_is_closed(jobs_api: TestClient) -> None:
    user = await sign_up(jobs_api)
    async with jobs_api.ws_connect("/api/v1/ws", headers=user.headers) as ws:
        await receive(ws)
        await ws.send_json({"op": "subscribe", "mine": True})
        await receive(ws)
        hub = jobs_api.app[LIVE]
        for seq in range(1, 50):  # a burst beyond WS_SEND_BUFFER, faster than it can be sent
            event = JobEvent(seq, str(uuid.uuid4()), "default", str(user.id), "running", 1, None, 0)
            hub.route(event)
        while (await ws.receive(timeout=5)).type == WSMsgType.TEXT:
            pass
        assert ws.close_code == 1013


async def test_two_server_processes_share_events_and_close_with_1001(
    job_settings: Settings, worker: Jobs, tmp_path: Path, jobs_api: TestClient
) -> None:
    user = await sign_up(jobs_api)
    servers, ports = [], [free_port(), free_port()]
    try:
        for port in ports:
            env = env_for(job_settings, PORT=str(port), DRAIN_SECONDS="0.2")
            server = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--workers",
                "1",
                cwd=ROOT,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            servers.append(server)
            await wait_until_serving(f"http://127.0.0.1:{port}/livez", server)
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(
                f"http://127.0.0.1:{ports[0]}/api/v1/ws", headers=user.headers
            )
            assert (await receive(ws))["type"] == "ready"
            await ws.send_json({"op": "subscribe", "mine": True})
            await receive(ws)
            body = {"type": "test_steps", "params": {"steps": 2}}
            async with session.post(
                f"http://127.0.0.1:{ports[1]}/api/v1/jobs", json=body, headers=user.headers
            ) as response:
                job_id = (await response.json())["id"]
            events = await job_events(ws, job_id)
            assert [e["state"] for e in events][0 :: len(events) - 1] == ["queued", "succeeded"]

            servers[0].send_signal(signal.SIGTERM)
            closing = await ws.receive(timeout=10)
            assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
            assert ws.close_code == 1001
            assert await asyncio.wait_for(servers[0].wait(), 20) == 0
            await ws.close()
    finally:
        for server in servers:
            if server.returncode is None:
                server.kill()
                await server.wait()


async def test_a_thumbnail_job_makes_a_downloadable_thumbnail(
    jobs_api: TestClient, worker: Jobs
) -> None:
    owner, stranger = await sign_up(jobs_api), await sign_up(jobs_api)
    uploaded = await upload(jobs_api, png(640, 480), filename="cat.png", headers=owner.headers)
    assert uploaded.status == 201, await uploaded.text()
    image = (await uploaded.json())["id"]

    theirs = await submit(jobs_api, stranger, {"type": "thumbnail", "params": {"file_id": image}})
    refused = await finished(jobs_api, stranger, (await theirs.json())["id"])
    assert (refused["state"], refused["error"]) == ("failed", "PermanentFailure: no such file")

    mine = await submit(jobs_api, owner, {"type": "thumbnail", "params": {"file_id": image}})
    done = await finished(jobs_api, owner, (await mine.json())["id"])
    assert done["state"] == "succeeded"
    got = await jobs_api.get(done["result"]["download_url"], headers=owner.headers)
    assert got.status == 200
    assert got.content_type == "image/webp"
    assert len(await got.read()) == done["result"]["size"]


# -- the commerce jobs -----------------------------------------------------------------------


async def place(api: TestClient, who: Caller, product: int, quantity: int, **headers: str) -> Any:
    return await api.post(
        "/api/v1/orders",
        json={"items": [{"product_id": product, "quantity": quantity}]},
        headers={**who.headers, **headers},
    )


async def test_an_order_commits_with_exactly_one_follow_up(
    jobs_api: TestClient, worker: Jobs
) -> None:
    staff, customer = await sign_up(jobs_api, "staff"), await sign_up(jobs_api)
    mug = await create(jobs_api, staff, name="Blue mug", price_minor=1250, stock=2)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await place(jobs_api, customer, mug["id"], 2, **key)
    again = await place(jobs_api, customer, mug["id"], 2, **key)  # a retry: the same order
    assert (first.status, again.status) == (201, 201)
    order = (await first.json())["id"]
    assert (await again.json())["id"] == order
    refused = await place(jobs_api, customer, mug["id"], 1)  # no stock left: no order, no job
    assert refused.status == 409

    async def follow_ups() -> list:
        async with worker.db.primary() as conn:
            return await conn.fetch(
                "SELECT id, state, result FROM jobs WHERE type = 'order_followup' "
                "AND owner_id = $1",
                str(customer.id),
            )

    async def done() -> bool:
        return [row["state"] for row in await follow_ups()] == ["succeeded"]

    await eventually(done, timeout=15)
    [job] = await follow_ups()
    assert job["result"] == {"order_id": order, "notice": "confirmation", "written": True}
    async with worker.db.primary() as conn:
        notice = await conn.fetchrow("SELECT * FROM order_notices WHERE order_id = $1", order)
    assert notice["subject"] == f"Your order #{order}"
    assert "2 x Blue mug" in notice["body"]
    assert "Total: 25.00 EUR" in notice["body"]


async def test_a_sales_report_is_followed_live_to_its_download(
    jobs_api: TestClient, worker: Jobs
) -> None:
    staff, buyers = await sign_up(jobs_api, "staff"), [await sign_up(jobs_api) for _ in range(2)]
    pen = await create(jobs_api, staff, price_minor=300, stock=10)
    placed = []
    for buyer, quantity in [(buyers[0], 1), (buyers[1], 2), (buyers[0], 3)]:
        response = await place(jobs_api, buyer, pen["id"], quantity)
        placed.append(await response.json())
    today = datetime.now(UTC).date().isoformat()

    async with jobs_api.ws_connect("/api/v1/ws", headers=staff.headers) as ws:
        assert (await receive(ws))["type"] == "ready"
        await ws.send_json({"op": "subscribe", "mine": True})
        assert (await receive(ws))["type"] == "subscribed"
        body = {"type": "sales_report", "params": {"from": today, "to": today}}
        created = await (await submit(jobs_api, staff, body)).json()
        assert (created["topic"], created["state"]) == ("reports", "queued")
        events = await job_events(ws, created["id"])
    states = [e["state"] for e in events]
    assert states[0] == "queued"
    assert states[-1] == "succeeded"
    assert set(states[1:-1]) == {"running"}
    progress = [e for e in events if e["state"] == "running" and e["message"]]
    assert progress[0]["message"].endswith("orders to export")
    assert progress[-1]["progress"] == 100

    report = await (
        await jobs_api.get(f"/api/v1/jobs/{created['id']}", headers=staff.headers)
    ).json()
    result = report["result"]
    download = await jobs_api.get(result["download_url"], headers=staff.headers)
    assert download.status == 200
    assert download.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await download.text())))
    assert len(rows) == result["rows"]
    mine = {int(row["order_id"]): row for row in rows}
    for order in placed:
        assert int(mine[order["id"]]["total_minor"]) == order["total_minor"]
        assert mine[order["id"]]["currency"] == "EUR"
    assert result["totals_minor"]["EUR"] >= 300 * 6
    stranger = await jobs_api.get(result["download_url"], headers=buyers[0].headers)
    assert stranger.status == 404
