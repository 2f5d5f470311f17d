"""What a running job sees: who it is, the worker's resources, and a way to report progress."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from uuid import UUID

from redis.asyncio import Redis

from config import Settings
from storage.filestore import FileStore
from storage.postgres import Database

ProgressSink = Callable[[UUID, int, int, str | None], Awaitable[None]]

# Progress is written at most this often per job, plus every change of the message.
PROGRESS_INTERVAL = 0.25


@dataclass(frozen=True)
class Resources:
    """Shared by every job a worker runs."""

    settings: Settings
    db: Database
    redis: Redis
    files: FileStore


@dataclass
class JobContext:
    job_id: UUID
    attempt: int
    owner_id: str | None
    topic: str
    resources: Resources
    _sink: ProgressSink
    _last: tuple[int, str | None] = (0, None)
    _last_at: float = field(default=0.0)

    async def progress(self, percent: int, message: str | None = None) -> None:
        """Report 0-100 and a short note; subscribers see it live. Cheap to call often."""
        percent = max(0, min(100, int(percent)))
        now = time.monotonic()
        if (percent, message) == self._last:
            return
        if message == self._last[1] and now - self._last_at < PROGRESS_INTERVAL:
            return
        self._last, self._last_at = (percent, message), now
        await self._sink(self.job_id, self.attempt, percent, message)
