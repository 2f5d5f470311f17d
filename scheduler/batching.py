"""Group commit: many concurrent callers, one database round trip.

`await batcher.submit(item)` queues the item; one flush task at a time hands every queued item
to `flush(items)` and answers each caller with its own result. While a flush is in progress the
next items accumulate, so under load batches grow by themselves and at low load a call costs
one extra turn of the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger("backend.jobs")

I = TypeVar("I")  # noqa: E741 - the item type
R = TypeVar("R")

Flush = Callable[[list[I]], Awaitable[Sequence[R]]]


class Batcher(Generic[I, R]):
    def __init__(self, flush: Flush[I, R], *, max_size: int = 500, name: str = "batch") -> None:
        self._flush = flush
        self.max_size = max_size
        self.name = name
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=f"batch:{self.name}")
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_size], self._queue[self.max_size :]
                await self._run(batch)
        finally:
            self._task = None

    async def _run(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except Exception as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Wait for the items already submitted."""
        if self._task is not None:
            await asyncio.shield(self._task)
