"""Writing job records together with their events, then announcing the events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from scheduler.events import Publisher
from scheduler.model import Change, JobEvent
from storage import jobs
from storage.postgres import Connection, Database

T = TypeVar("T")

Work = Callable[[Connection], Awaitable[tuple[T, list[Change]]]]

_TRIES = 3


class Records:
    def __init__(self, db: Database, publisher: Publisher) -> None:
        self.db = db
        self.publisher = publisher

    async def write(self, work: Work[T]) -> T:
        """Run `work(conn)` in one transaction with the events it returns; announce them after
        commit. Batches that touch the same jobs concurrently may deadlock: tried again."""
        for attempt in range(_TRIES):
            try:
                result, events = await self._once(work)
            except asyncpg.DeadlockDetectedError:
                if attempt == _TRIES - 1:
                    raise
                continue
            await self.publisher.publish(events)
            return result
        raise AssertionError("unreachable")

    async def _once(self, work: Work[T]) -> tuple[T, list[JobEvent]]:
        async with self.db.primary() as conn, conn.transaction():
            result, changes = await work(conn)
            return result, await jobs.append_events(conn, changes)
