"""`GET /api/v1/ws`: live job status (the protocol is described in `server.live`)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pydantic
from aiohttp import WSMsgType, web

from actors.errors import DomainError
from actors.identity import Principal
from actors.jobs import JOBS, REPLAY_LIMIT, EventsSince, VisibleJobs, is_staff
from actors.system import ActorSystem
from observability import metrics
from server.live import (
    CLOSE_TOO_MANY,
    CLOSE_UNAUTHENTICATED,
    LIVE,
    MAX_MESSAGE,
    Auth,
    Client,
    ClientMessage,
    LiveHub,
    Refused,
    Subscribe,
)
from server.routing import PUBLIC, Routes
from server.state import ACTORS, PRINCIPAL

routes = Routes("/api/v1", tag="live")


@routes.get("/ws", access=PUBLIC, long_lived=True)
async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Live job status over WebSocket: authenticate (first message, or a bearer header on the
    upgrade), subscribe to jobs, to your own jobs, or (staff) to topics, optionally `since` a
    sequence number to get what you missed."""
    hub = request.app[LIVE]
    ws = web.WebSocketResponse(
        heartbeat=hub.settings.ws_heartbeat_seconds, max_msg_size=MAX_MESSAGE
    )
    await ws.prepare(request)
    hub.sockets.add(ws)
    try:
        principal, token = request.get(PRINCIPAL), _bearer(request)
        if principal is None or token is None:
            principal, token = await _first_auth(ws, hub)
        if principal is not None and token is not None:
            await _serve(hub, Client(hub, ws, principal, token), request.app[ACTORS])
    finally:
        hub.sockets.discard(ws)
    return ws


def _bearer(request: web.Request) -> str | None:
    """The token of the upgrade's `Authorization: Bearer` header (checked by authentication)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def _first_auth(
    ws: web.WebSocketResponse, hub: LiveHub
) -> tuple[Principal | None, str | None]:
    try:
        message = await ws.receive(timeout=hub.settings.ws_auth_timeout)
        if message.type != WSMsgType.TEXT:
            raise Refused("authenticate first")
        auth = ClientMessage.validate_json(message.data)
        if not isinstance(auth, Auth):
            raise Refused('the first message is {"op": "auth", "token": ...}')
        return await hub.authenticate(auth.token), auth.token
    except (TimeoutError, Refused, DomainError, pydantic.ValidationError) as error:
        metrics.WS_CLOSED.labels("unauthenticated").inc()
        detail = (
            error.detail
            if isinstance(error, DomainError)
            else str(error) or "authentication timed out"
        )
        await ws.send_str(orjson.dumps({"type": "error", "detail": detail}).decode())
        await ws.close(code=CLOSE_UNAUTHENTICATED, message=b"authentication required")
        return None, None


async def _serve(hub: LiveHub, client: Client, actors: ActorSystem) -> None:
    if not await hub.admit(client):
        metrics.WS_CLOSED.labels("too_many").inc()
        client.reply({"type": "error", "detail": "too many connections for this user"})
        await asyncio.sleep(0)
        await client.ws.close(code=CLOSE_TOO_MANY, message=b"too many connections")
        return
    try:
        client.reply({"type": "ready", "user_id": client.principal.user_id})
        async for message in client.ws:
            hub.received.inc()
            try:
                if message.type != WSMsgType.TEXT:
                    raise Refused("send JSON text frames")
                await _handle(hub, client, actors, ClientMessage.validate_json(message.data))
            except pydantic.ValidationError as error:
                client.reply({"type": "error", "detail": _explain(error)})
            except Refused as error:
                client.reply({"type": "error", "detail": str(error)})
            except DomainError as error:
                client.reply({"type": "error", "detail": error.detail})
    finally:
        await hub.release(client)


async def _handle(
    hub: LiveHub, client: Client, actors: ActorSystem, message: Auth | Subscribe
) -> None:
    if isinstance(message, Auth):  # a fresh token for the same user (roles may have changed)
        principal = await hub.authenticate(message.token)
        if principal.user_id != client.principal.user_id:
            raise Refused("a connection belongs to one user")
        client.principal, client.token = principal, message.token
        client.reply({"type": "ready", "user_id": principal.user_id})
        return
    jobs = [str(job_id) for job_id in message.jobs]
    if message.op == "unsubscribe":
        hub.unsubscribe(client, jobs=jobs, mine=message.mine, topics=message.topics)
        client.reply(
            {"type": "unsubscribed", "jobs": jobs, "mine": message.mine, "topics": message.topics}
        )
        return
    await _check(hub, client, actors, message)
    if message.since is None:
        hub.subscribe(client, jobs=jobs, mine=message.mine, topics=message.topics)
        client.reply(_subscribed(message, jobs, 0))
        return
    client.replaying += 1
    try:
        hub.subscribe(client, jobs=jobs, mine=message.mine, topics=message.topics)
        missed = await actors[JOBS].ask(
            EventsSince(
                client.principal,
                message.since,
                tuple(message.jobs),
                message.mine,
                tuple(message.topics),
            )
        )
    finally:
        client.replaying -= 1
    held, client.held = (client.held, []) if not client.replaying else ([], client.held)
    merged = {event.seq: event for event in held}
    merged.update((event.seq, event) for event in missed)
    client.replayed = frozenset(merged)
    client.reply(_subscribed(message, jobs, len(missed)))
    for seq in sorted(merged):
        client.send(orjson.dumps(merged[seq].wire()))
    if len(missed) >= REPLAY_LIMIT:
        client.reply(
            {
                "type": "error",
                "detail": f"replay stopped after {REPLAY_LIMIT} events: "
                f"subscribe again with since={missed[-1].seq}",
            }
        )


async def _check(hub: LiveHub, client: Client, actors: ActorSystem, message: Subscribe) -> None:
    if not (message.jobs or message.mine or message.topics):
        raise Refused("subscribe to jobs, mine or topics")
    if len(client.jobs) + len(message.jobs) > hub.settings.ws_max_subscriptions:
        raise Refused(
            f"at most {hub.settings.ws_max_subscriptions} job subscriptions per connection"
        )
    if message.topics:
        if not is_staff(client.principal):
            raise Refused("only staff may watch whole topics")
        unknown = sorted(set(message.topics) - set(hub.settings.job_topics))
        if unknown:
            raise Refused(f"unknown topics: {', '.join(unknown)}")
    if message.jobs:
        visible = await actors[JOBS].ask(VisibleJobs(client.principal, tuple(message.jobs)))
        missing = [str(job_id) for job_id in message.jobs if job_id not in visible]
        if missing:
            raise Refused(f"no such job: {', '.join(missing)}")


def _subscribed(message: Subscribe, jobs: list[str], replayed: int) -> dict[str, Any]:
    return {
        "type": "subscribed",
        "jobs": jobs,
        "mine": message.mine,
        "topics": message.topics,
        "replayed": replayed,
    }


def _explain(error: pydantic.ValidationError) -> str:
    items = error.errors(include_url=False, include_input=False, include_context=False)
    return "; ".join(f"{'.'.join(map(str, i['loc'])) or 'message'}: {i['msg']}" for i in items)
