"""Batching: many concurrent callers, one round trip.

A round trip costs the client far more CPU than the work it carries costs the server, and under
load many requests want the same kind of call at once. Two policies:

* `TickBatch`: the calls made during one event-loop tick go together, in one `send(items)`
  scheduled for the end of the tick; batches of successive ticks may be in flight together.
  A lone call costs one round trip as before. For Redis calls on the request path.
* `GroupCommit`: one `flush(items)` at a time; what arrives meanwhile waits for the next, so
  under load batches grow by themselves (and at low load a call costs one extra turn of the
  loop). For database writes, where fewer, larger transactions are the point. A call
  cancelled before its batch is flushed is left out of it.

Either way each caller gets its own item's result, and a failed round trip fails every call it
carried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")

Send = Callable[[list[I]], Awaitable[Sequence[R]]]
Pending = list[tuple[I, asyncio.Future[R]]]

MAX_BATCH = 512


class TickBatch(Generic[I, R]):
    """`await batch(item)` -> the result for `item`, from one `send` per tick (and per
    `max_batch` items)."""

    def __init__(self, send: Send[I, R], *, max_batch: int = MAX_BATCH) -> None:
        self._send = send
        self._max_batch = max_batch
        self._pending: Pending[I, R] = []
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
            task = asyncio.create_task(
                _deliver(self._send, pending[start : start + self._max_batch])
            )
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)


class GroupCommit(Generic[I, R]):
    """`await group.submit(item)` -> the result for `item`, from the next `flush`."""

    def __init__(self, flush: Send[I, R], *, max_size: int = 500, name: str = "batch") -> None:
        self._flush = flush
        self.max_size = max_size
        self.name = name
        self._queue: Pending[I, R] = []
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
                # A caller that gave up while it waited (its deadline, a disconnect) is left
                # out: what it asked for is not done behind its back.
                batch = [(item, answer) for item, answer in batch if not answer.done()]
                if batch:
                    await _deliver(self._flush, batch)
        finally:
            self._task = None

    async def close(self) -> None:
        """Wait for the items already submitted."""
        if self._task is not None:
            await asyncio.shield(self._task)


async def _deliver(send: Send[I, R], batch: Pending[I, R]) -> None:
    """One round trip for `batch`; each caller gets its result, or the failure."""
    try:
        results = await send([item for item, _ in batch])
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
