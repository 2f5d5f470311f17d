"""The actor system: starts actors in dependency order and stops them in reverse."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Generic

from actors.runtime import A, ActorRef, Backoff

log = logging.getLogger("backend.actors")


@dataclass(frozen=True)
class ActorKey(Generic[A]):
    """A typed name for an actor: `system[KEY]` is an `ActorRef` of the right actor type."""

    name: str


class ActorSystem:
    """Owns a set of actors. Spawn an actor after the actors it depends on; leaving the
    `async with` block stops them newest first, each draining its mailbox."""

    def __init__(self, *, mailbox_size: int = 256, stop_timeout: float = 10.0) -> None:
        self.mailbox_size = mailbox_size
        self.stop_timeout = stop_timeout
        self._refs: dict[str, ActorRef[object]] = {}

    async def spawn(
        self,
        key: ActorKey[A],
        factory: Callable[[], A],
        *,
        concurrency: int = 1,
        mailbox_size: int | None = None,
        backoff: Backoff | None = None,
    ) -> ActorRef[A]:
        """Start an actor built by `factory` (called again for each restart)."""
        if key.name in self._refs:
            raise ValueError(f"an actor named {key.name!r} already exists")
        ref = ActorRef(
            factory,
            name=key.name,
            concurrency=concurrency,
            mailbox_size=mailbox_size or self.mailbox_size,
            backoff=backoff or Backoff(),
        )
        await ref.start()
        self._refs[key.name] = ref  # type: ignore[assignment]
        return ref

    def __getitem__(self, key: ActorKey[A]) -> ActorRef[A]:
        return self._refs[key.name]  # type: ignore[return-value]

    async def stop(self) -> None:
        while self._refs:
            _, ref = self._refs.popitem()
            try:
                await ref.stop(self.stop_timeout)
            except Exception:
                log.exception("actor stop failed", extra={"actor": ref.name})

    def __iter__(self) -> Iterator[ActorRef[object]]:
        return iter(self._refs.values())

    async def __aenter__(self) -> ActorSystem:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
