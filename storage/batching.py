"""Batching per event-loop tick: calls made during one tick share one round trip.

A Redis command costs the client far more CPU than it costs Redis, and under load many
requests want the same kind of command in the same tick. `TickBatch` collects the calls made
during a tick and sends them with one call of `send(items) -> results` scheduled for the end
of the tick: a lone call costs one round trip as before, and a busy tick costs one for all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")

MAX_BATCH = 512


class TickBatch(Generic[I, R]):
    """`await batch(item)` -> the result for `item`, from one `send` per tick (and per
    `max_batch` items). A failed `send` fails every call it carried."""

    def __init__(
        self, send: Callable[[list[I]], Awaitable[Sequence[R]]], *, max_batch: int = MAX_BATCH
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def __call__(self, item: I) -> R:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[R] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((item, answer))
        return await answer

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self._max_batch):
            task = asyncio.create_task(self._deliver(pending[start : start + self._max_batch]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _deliver(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            results = await self._send([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, answer in batch:
                answer.cancel()
            raise
        except Exception as error:  # every call in the batch gets the failure to handle
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(error)
            return
        for (_, answer), result in zip(batch, results, strict=True):
            if not answer.done():
                answer.set_result(result)
