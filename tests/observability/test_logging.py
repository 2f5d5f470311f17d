"""Logs: one JSON object per line with time, level, message, request, trace, span and user ids;
passwords, tokens, `Authorization` and cookies never written, in a real server's output."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from config import Settings
from observability import tracing
from observability.logging import JsonFormatter, request_id, user_id
from server.app import create_app
from tests.observability.conftest import stop
from tests.processes import ROOT, free_port, service_env, wait_until_serving

PASSWORD = "Correct-Horse-Battery-" + secrets.token_hex(4)
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ" + secrets.token_hex(8) + "In0.c2lnbmF0dXJl" + "x" * 8
COOKIE = "cookie-" + secrets.token_hex(8)


def record(message: str, *args: Any, exc: BaseException | None = None, **extra: Any) -> dict:
    entry = logging.LogRecord("backend.test", logging.WARNING, __file__, 1, message, args, None)
    if exc is not None:
        entry.exc_info = (type(exc), exc, exc.__traceback__)
    entry.__dict__.update(extra)
    line = JsonFormatter().format(entry)
    assert "\n" not in line
    return json.loads(line)


def test_a_line_is_one_json_object_with_its_context() -> None:
    rid, uid = request_id.set("req-1"), user_id.set("user-7")
    try:
        entry = record("stock for %s is %d", "sku-1", 3, actor="catalog")
    finally:
        request_id.reset(rid)
        user_id.reset(uid)
    assert entry["message"] == "stock for sku-1 is 3"
    assert entry["level"] == "warning"
    assert entry["time"].endswith("+00:00")
    assert entry["request_id"] == "req-1"
    assert entry["user_id"] == "user-7"
    assert entry["actor"] == "catalog"


def test_secret_fields_are_redacted_whatever_their_value() -> None:
    entry = record(
        "login",
        password=PASSWORD,
        refresh_token=JWT,
        headers={"Authorization": f"Bearer {JWT}", "Cookie": COOKIE, "Accept": "text/html"},
        body={"user": {"email": "a@example.test", "new_password": PASSWORD}},
        items=[{"api_key": "k-" + COOKIE}],
    )
    text = json.dumps(entry)
    for secret in (PASSWORD, JWT, COOKIE):
        assert secret not in text
    assert entry["password"] == "[REDACTED]"
    assert entry["headers"]["Accept"] == "text/html"
    assert entry["body"]["user"]["email"] == "a@example.test"


@pytest.mark.parametrize(
    "message",
    [
        f"Authorization: Bearer {JWT}",
        f"authorization=Basic {COOKIE}",
        f"token {JWT} rejected",
        f"Cookie: session={COOKIE}; theme=dark",
        f"posted password={PASSWORD}&email=a@b.test",
        f"body {{'password': '{PASSWORD}', 'email': 'a@b.test'}}",
        f'json {{"refresh_token": "{COOKIE}"}}',
        f"connect to postgresql://backend:{PASSWORD}@db:5432/backend failed",
        f"1 validation error [type=string_too_short, input_value='{PASSWORD}', input_type=str]",
    ],
)
def test_secrets_in_text_are_scrubbed(message: str) -> None:
    entry = record(message, exc=ValueError(message))
    text = json.dumps(entry)
    for secret in (PASSWORD, JWT, COOKIE):
        assert secret not in text
    assert "[REDACTED]" in entry["message"] or "***@" in entry["message"]


def test_ordinary_text_is_left_alone() -> None:
    message = "replica0 lag 3.2s; reads on primary (no healthy replica); sku=AB-12"
    assert record(message)["message"] == message


def test_lines_inside_a_span_carry_its_ids(spans: InMemorySpanExporter) -> None:
    with tracing.span("work", root=True) as span:
        entry = record("inside")
    context = span.get_span_context()
    assert entry["trace_id"] == format(context.trace_id, "032x")
    assert entry["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in record("outside")


async def test_access_lines_carry_the_request_span(
    spans: InMemorySpanExporter, settings: Settings, aiohttp_client, capfd
) -> None:
    logged = settings.model_copy(update={"access_log": True})
    client: TestClient = await aiohttp_client(await create_app(logged))
    assert (await client.get("/livez", headers={"X-Request-ID": "access-1"})).status == 200
    await client.close()  # flushes the access log
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if "access-1" in line]
    [access] = [line for line in lines if line["logger"] == "backend.access"]
    [span] = [s for s in spans.get_finished_spans() if s.name == "GET /livez"]
    assert access["trace_id"] == format(span.context.trace_id, "032x")
    assert access["span_id"] == format(span.context.span_id, "016x")
    assert access["route"] == "/livez"
    assert access["status"] == 200


# -- a real server's output ------------------------------------------------------------------


async def auth_flow(session: aiohttp.ClientSession, base: str) -> list[str]:
    """Register, log in, refresh, ask who am I, log out (the commerce issue's contract); the
    secrets it handled. Nothing when the auth endpoints are not there yet."""
    api = f"{base}/api/v1"
    email = f"logs-{secrets.token_hex(4)}@example.com"
    account = {"email": email, "password": PASSWORD, "name": "Log Test"}
    async with session.post(f"{api}/auth/register", json=account) as response:
        if response.status == 404:
            return []
        assert response.status == 201, await response.text()
    credentials = {"email": email, "password": PASSWORD}
    async with session.post(f"{api}/auth/login", json=credentials) as response:
        assert response.status == 200, await response.text()
        first = await response.json()
    wrong = {"email": email, "password": PASSWORD + "-wrong"}
    async with session.post(f"{api}/auth/login", json=wrong) as response:
        assert response.status == 401
    refresh = {"refresh_token": first["refresh_token"]}
    async with session.post(f"{api}/auth/refresh", json=refresh) as response:
        assert response.status == 200, await response.text()
        tokens = await response.json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with session.get(f"{api}/me", headers=bearer) as response:
        assert response.status == 200
    logout = {"refresh_token": tokens["refresh_token"]}
    async with session.post(f"{api}/auth/logout", json=logout, headers=bearer) as response:
        assert response.status == 204
    async with session.post(f"{api}/auth/refresh", json=refresh) as response:
        assert response.status == 401  # reuse of a rotated token
    return [
        PASSWORD,
        first["access_token"],
        first["refresh_token"],
        tokens["access_token"],
        tokens["refresh_token"],
    ]


def console_spans(text: str) -> list[dict[str, Any]]:
    """The JSON objects the console exporter printed one after another."""
    decoder, found, position = json.JSONDecoder(), [], 0
    while (position := _skip_space(text, position)) < len(text):
        span, position = decoder.raw_decode(text, position)
        found.append(span)
    return found


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


async def test_a_real_servers_output_holds_no_secret(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    env = service_env(
        settings, LOG_LEVEL="DEBUG", ACCESS_LOG="true", TRACING_EXPORTER="console", PORT=str(port)
    )
    with stdout.open("wb") as out, stderr.open("wb") as err:
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server.cli", "serve", "--workers", "1",
            cwd=ROOT, env=env, stdout=out, stderr=err,
        )  # fmt: skip
    try:
        await wait_until_serving(f"{base}/readyz", server)
        sensitive = {"Authorization": f"Bearer {JWT}", "Cookie": f"session={COOKIE}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/livez?token={COOKIE}", headers=sensitive) as r:
                assert r.status == 401  # a forged bearer token is refused
            async with session.get(f"{base}/livez", headers={"Cookie": sensitive["Cookie"]}) as r:
                assert r.status == 200
            async with session.post(f"{base}/livez", json={"password": PASSWORD}) as r:
                assert r.status == 405
            async with session.get(f"{base}/nowhere/{secrets.token_hex(2)}") as r:
                assert r.status == 404
            handled = await auth_flow(session, base)
    finally:
        await stop(server)
    logs, traces = stderr.read_text(), stdout.read_text()

    for secret in (JWT, COOKIE, PASSWORD, *handled):
        assert secret not in logs
        assert secret not in traces
    lines = [json.loads(line) for line in logs.splitlines()]
    assert all({"time", "level", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line.get("logger") == "backend.access"]
    assert len(access) >= 3 + len(handled)
    assert all(line["request_id"] and line["trace_id"] and line["span_id"] for line in access)
    if handled:  # who asked, on the lines of authenticated requests
        assert any(line.get("user_id") for line in access if line["route"] == "/api/v1/me")

    [livez] = [line for line in access if line["route"] == "/livez" and line["status"] == 200]
    assert any(line["route"] == "/livez" and line["status"] == 401 for line in access)
    exported = {(span["name"], span["context"]["trace_id"]) for span in console_spans(traces)}
    assert ("GET /livez", "0x" + livez["trace_id"]) in exported
