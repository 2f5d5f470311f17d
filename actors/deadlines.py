"""Deadlines for many tasks and futures on one timer per event loop.

`asyncio.timeout` arms a loop timer per use (under uvloop a libuv handle, created and closed
each time). A request that passes through an actor has three deadlines (the request, the ask,
the handler), so at thousands of requests a second that shows. Here a deadline is a dict entry,
and one sweeper task per loop expires overdue entries every `RESOLUTION` seconds: deadlines are
honoured to within that resolution, at a fraction of the cost.

Deadlines are `time.monotonic()` values.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

RESOLUTION = 0.02


class Sweeper:
    """Calls each watched key's expiry callback once its deadline has passed."""

    def __init__(self) -> None:
        self._entries: dict[Any, tuple[float, Callable[[], None]]] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, key: Any, deadline: float, on_expire: Callable[[], None]) -> None:
        self._entries[key] = (deadline, on_expire)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sweep(), name="deadlines")

    def unwatch(self, key: Any) -> None:
        self._entries.pop(key, None)

    async def _sweep(self) -> None:
        try:
            while self._entries:
                await asyncio.sleep(RESOLUTION)
                now = time.monotonic()
                overdue = [key for key, (deadline, _) in self._entries.items() if deadline <= now]
                for key in overdue:
                    _, on_expire = self._entries.pop(key)
                    on_expire()
        finally:
            self._task = None


_sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Sweeper] = (
    weakref.WeakKeyDictionary()
)


def sweeper() -> Sweeper:
    """The running loop's sweeper."""
    loop = asyncio.get_running_loop()
    found = _sweepers.get(loop)
    if found is None:
        found = _sweepers[loop] = Sweeper()
    return found


class cancel_at:
    """`with cancel_at(deadline):` cancels the current task at `deadline` and turns that
    cancellation into `TimeoutError`, as `asyncio.timeout_at` does, on the shared sweeper."""

    __slots__ = ("_cancelling", "_sweeper", "_task", "deadline", "expired")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False

    def __enter__(self) -> cancel_at:
        task = asyncio.current_task()
        assert task is not None, "cancel_at is used inside a task"
        self._task = task
        self._cancelling = task.cancelling()
        self._sweeper = sweeper()
        self._sweeper.watch(task, self.deadline, self._expire)
        return self

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._sweeper.unwatch(self._task)
        if (
            self.expired
            and exc_type is asyncio.CancelledError
            and self._task.uncancel() <= self._cancelling
        ):
            raise TimeoutError from exc
