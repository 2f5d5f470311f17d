"""Structured logs: one JSON object per line, with the request's id on every line it causes,
and its trace and span ids when it is traced. Secrets are redacted before a line is written."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from observability import tracing
from observability.redaction import redact, scrub

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
user_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("user_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line: time, level, logger, message, context (request, user,
    trace and span ids), extras; with secrets redacted (`observability.redaction`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        if (rid := request_id.get()) is not None:
            entry["request_id"] = rid
        if (uid := user_id.get()) is not None:
            entry["user_id"] = uid
        if (ids := tracing.log_fields()) is not None:
            entry.update(ids)
        extras = {
            key: value
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_") and key not in entry
        }
        entry.update(redact(extras))
        if record.exc_info:
            entry["error"] = scrub(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class AccessLog:
    """Access lines, one JSON object per request, in the same shape as every other log line.

    They bypass the `logging` machinery (a record, a lock and a flush per request) and are
    written to stderr in batches, flushed every `interval` seconds and on `flush()`.
    """

    def __init__(self, interval: float = 0.05, batch: int = 512) -> None:
        self.interval = interval
        self.batch = batch
        self._lines: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    def write(self, message: str, *, user: str | None = None, **fields: Any) -> None:
        """Queue one line; `user` is the caller's id when the request authenticated one."""
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "info",
            "logger": "backend.access",
            "message": message,
            "request_id": request_id.get(),
            **fields,
        }
        if (uid := user_id.get() or user) is not None:
            entry["user_id"] = uid
        if tracing.tracer is not None and (ids := tracing.log_fields()) is not None:
            entry.update(ids)
        self._lines.append(orjson.dumps(entry, default=str))
        if len(self._lines) >= self.batch:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            lines, self._lines = self._lines, []
            sys.stderr.flush()
            sys.stderr.buffer.write(b"\n".join(lines) + b"\n")
            sys.stderr.buffer.flush()


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log is replaced by ours (server.middleware); keep its errors.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
