"""Work an actor does on its own schedule (upkeep), beside the messages it handles."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


def repeat(
    work: Callable[[], Awaitable[object]], *, every: float, name: str, log: logging.Logger
) -> asyncio.Task[None]:
    """Run `work` now and then every `every` seconds until cancelled; a failure is logged
    and the next round runs as planned."""

    async def rounds() -> None:
        while True:
            try:
                await work()
            except Exception:
                log.exception("%s failed; will retry", name)
            await asyncio.sleep(every)

    return asyncio.create_task(rounds(), name=name)


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
