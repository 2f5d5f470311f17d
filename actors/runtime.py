"""A small asyncio actor runtime.

An `Actor` holds state and resources; the world talks to it only through its `ActorRef`:

* `ref.tell(msg)` posts and returns; `await ref.ask(msg)` posts and waits for the answer.
* The mailbox is bounded: when it is full the post is refused at once with `Overloaded`.
* Up to `concurrency` messages are handled at once (sized to the pools the actor owns),
  in mailbox order, each in the context of its sender (request id, trace, deadline), and,
  when tracing is on, in a span of its own within the sender's trace.
* Every message carries a deadline: the sender's remaining budget (`deadline_scope`) or an
  explicit timeout. A message whose deadline passed before it was handled is dropped, and
  one that runs past it is cancelled; both answer `DeadlineExceeded`.
* An unexpected exception crashes the actor: the sender gets the exception, `on_failure`
  runs, and the ref restarts a fresh instance (`on_stop`, backoff, `on_start`) while its
  mailbox keeps filling up to its bound. `DomainError`s are answers, not crashes.
* `stop()` refuses new messages, drains the mailbox in order, then runs `on_stop`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, get_type_hints

from actors.deadlines import cancel_at, sweeper
from actors.errors import ActorStopped, DeadlineExceeded, DomainError, Overloaded
from observability import metrics, tracing

log = logging.getLogger("backend.actors")

T = TypeVar("T")
A = TypeVar("A", bound="Actor")

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)

DEFAULT_ASK_TIMEOUT = 30.0


class Message(Generic[T]):
    """Base of typed messages: `await ref.ask(msg)` returns the `T` of `Message[T]`."""

    __slots__ = ()


class deadline_scope:
    """`with deadline_scope(seconds):` gives the code inside (and every actor it asks) at most
    `seconds`, or less if the enclosing scope has less left."""

    __slots__ = ("_token", "deadline")

    def __init__(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        outer = _deadline.get()
        self.deadline = deadline if outer is None else min(deadline, outer)

    def __enter__(self) -> float:
        self._token = _deadline.set(self.deadline)
        return self.deadline

    def __exit__(self, *exc_info: object) -> None:
        _deadline.reset(self._token)


def remaining() -> float | None:
    """Seconds left in the current deadline scope, or None outside one."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def handler(fn: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    """Mark an actor method as the handler for the message type its argument is annotated with."""
    fn.__actor_handler__ = True  # type: ignore[attr-defined]
    return fn


class Actor:
    """Base class for actors: override the hooks and write `@handler` methods."""

    _dispatch: ClassVar[dict[type, Callable[..., Awaitable[Any]]] | None] = None

    async def on_start(self) -> None:
        """Acquire resources. Raising here fails the start (or retries a restart)."""

    async def on_stop(self) -> None:
        """Release what `on_start` acquired. Runs after the mailbox has drained."""

    async def on_failure(self, error: BaseException) -> None:
        """Called after a crash, before `on_stop` and the restart."""

    async def receive(self, message: Any) -> Any:
        """Handle one message. The default dispatches on the message's type to a `@handler`."""
        table = type(self)._handlers()
        try:
            method = table[type(message)]
        except KeyError:
            raise TypeError(
                f"{type(self).__name__} has no handler for {type(message).__name__}"
            ) from None
        return await method(self, message)

    @classmethod
    def _handlers(cls) -> dict[type, Callable[..., Awaitable[Any]]]:
        if cls.__dict__.get("_dispatch") is None:
            table: dict[type, Callable[..., Awaitable[Any]]] = {}
            for klass in reversed(cls.__mro__):
                for fn in vars(klass).values():
                    if getattr(fn, "__actor_handler__", False):
                        hints = get_type_hints(fn)
                        message_type = next(v for k, v in hints.items() if k != "return")
                        table[message_type] = fn
            cls._dispatch = table
        return cls._dispatch  # type: ignore[return-value]


@dataclass(slots=True)
class ActorStats:
    """What an actor has done so far; mirrored into Prometheus as it happens."""

    processed: int = 0
    failed: int = 0
    rejected: int = 0
    expired: int = 0
    restarts: int = 0
    handling_seconds: float = 0.0


@dataclass(slots=True)
class _Envelope:
    message: Any
    reply: asyncio.Future[Any] | None
    deadline: float
    context: contextvars.Context


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays: `initial * factor**n`, capped."""

    initial: float = 0.05
    factor: float = 2.0
    maximum: float = 5.0

    def delay(self, attempt: int) -> float:
        return min(self.maximum, self.initial * self.factor**attempt)


_STOP = object()


@dataclass(eq=False)
class ActorRef(Generic[A]):
    """The handle through which an actor is started, asked, told and stopped."""

    factory: Callable[[], A]
    name: str
    mailbox_size: int = 256
    concurrency: int = 1
    backoff: Backoff = field(default_factory=Backoff)

    stats: ActorStats = field(default_factory=ActorStats, init=False)
    _actor: A | None = field(default=None, init=False)
    _mailbox: asyncio.Queue[Any] = field(init=False)
    _workers: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    _accepting: bool = field(default=False, init=False)
    _running: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _idle: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _in_progress: int = field(default=0, init=False)
    _restarting: asyncio.Task[None] | None = field(default=None, init=False)
    _crash_streak: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._mailbox = asyncio.Queue(self.mailbox_size)
        self._idle.set()
        self._metrics = metrics.ActorMetrics(self.name)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        actor = self.factory()
        await actor.on_start()
        self._actor = actor
        self._workers = [
            asyncio.create_task(self._work(), name=f"actor:{self.name}:{i}")
            for i in range(self.concurrency)
        ]
        self._accepting = True
        self._running.set()
        log.info("actor started", extra={"actor": self.name, "concurrency": self.concurrency})

    async def stop(self, timeout: float = 10.0) -> None:
        """Refuse new messages, finish the queued ones in order, then release resources."""
        if not self._accepting:
            return
        self._accepting = False
        try:
            async with asyncio.timeout(timeout):
                for _ in self._workers:
                    await self._mailbox.put(_STOP)
                await asyncio.gather(*self._workers)
        except TimeoutError:
            log.warning("actor drain timed out; cancelling", extra={"actor": self.name})
            await _cancel(*self._workers, self._restarting)
            self._refuse_queued()
        self._workers.clear()
        if self._actor is not None:
            # Shutdown has a deadline: a resource that hangs while closing must not hold it.
            try:
                async with asyncio.timeout(timeout):
                    await self._actor.on_stop()
            except TimeoutError:
                log.error(
                    "actor on_stop timed out; resources abandoned", extra={"actor": self.name}
                )
            self._actor = None
        log.info("actor stopped", extra={"actor": self.name})

    def _refuse_queued(self) -> None:
        while not self._mailbox.empty():
            envelope = self._mailbox.get_nowait()
            if envelope is not _STOP:
                _answer(envelope, error=ActorStopped(self.name, "stopped before handling"))

    @property
    def mailbox_depth(self) -> int:
        return self._mailbox.qsize()

    @property
    def in_progress(self) -> int:
        return self._in_progress

    # -- messaging ---------------------------------------------------------------------------

    def tell(self, message: Any, *, timeout: float | None = None) -> None:
        """Post without waiting for an answer; failures are logged."""
        self._post(message, None, timeout)

    async def ask(self, message: Message[T], *, timeout: float | None = None) -> T:
        """Post and wait for the answer within the message's deadline."""
        reply: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        deadline = self._post(message, reply, timeout)
        deadlines = sweeper()

        def expire() -> None:
            if not reply.done():
                reply.set_exception(
                    DeadlineExceeded(self.name, f"no answer to {type(message).__name__}")
                )

        deadlines.watch(reply, deadline, expire)
        try:
            return await reply
        finally:
            deadlines.unwatch(reply)

    def _post(
        self, message: Any, reply: asyncio.Future[Any] | None, timeout: float | None
    ) -> float:
        if not self._accepting:
            raise ActorStopped(self.name, "not accepting messages")
        now = time.monotonic()
        deadline = now + (timeout if timeout is not None else DEFAULT_ASK_TIMEOUT)
        outer = _deadline.get()
        if outer is not None and (timeout is None or outer < deadline):
            deadline = outer
        context = contextvars.copy_context()
        context.run(_deadline.set, deadline)
        try:
            self._mailbox.put_nowait(_Envelope(message, reply, deadline, context))
        except asyncio.QueueFull:
            self.stats.rejected += 1
            self._metrics.rejected()
            raise Overloaded(self.name, f"mailbox full ({self.mailbox_size})") from None
        self._metrics.mailbox(self._mailbox.qsize())
        return deadline

    # -- workers -----------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            envelope = await self._mailbox.get()
            if envelope is _STOP:
                return
            self._metrics.mailbox(self._mailbox.qsize())
            await self._running.wait()
            if envelope.reply is not None and envelope.reply.done():
                continue  # the sender gave up
            if envelope.deadline <= time.monotonic():
                self._expire(envelope)
                continue
            self._begin()
            try:
                await asyncio.create_task(self._handle(envelope), context=envelope.context)
            finally:
                self._end()

    async def _handle(self, envelope: _Envelope) -> None:
        if not tracing.recording():  # tracing off, or the sender's trace is not recorded
            await self._receive(envelope)
            return
        name = type(envelope.message).__name__
        with tracing.start(
            f"{self.name} {name}", attributes={"actor.name": self.name, "actor.message": name}
        ) as span:
            error = await self._receive(envelope)
            if error is not None:
                tracing.failed(span, error)

    async def _receive(self, envelope: _Envelope) -> Exception | None:
        """Handle one message and answer it; return the error if it crashed the actor."""
        assert self._actor is not None
        started = time.monotonic()
        scope = cancel_at(envelope.deadline)
        try:
            with scope:
                result = await self._actor.receive(envelope.message)
        except DomainError as error:
            self._done(started)
            _answer(envelope, error=error)
        except TimeoutError as error:
            if not scope.expired:
                self._crash(envelope, error, started)
                return error
            self._expire(envelope)
        except Exception as error:
            self._crash(envelope, error, started)
            return error
        else:
            self._done(started)
            self._crash_streak = 0
            _answer(envelope, result=result)
        return None

    def _done(self, started: float) -> None:
        elapsed = time.monotonic() - started
        self.stats.processed += 1
        self.stats.handling_seconds += elapsed
        self._metrics.processed(elapsed)

    def _expire(self, envelope: _Envelope) -> None:
        self.stats.expired += 1
        self._metrics.expired()
        _answer(envelope, error=DeadlineExceeded(self.name, type(envelope.message).__name__))

    def _crash(self, envelope: _Envelope, error: Exception, started: float) -> None:
        self.stats.failed += 1
        self._metrics.failed(time.monotonic() - started)
        log.error(
            "actor crashed handling %s",
            type(envelope.message).__name__,
            exc_info=error,
            extra={"actor": self.name},
        )
        _answer(envelope, error=error)
        if self._restarting is None and self._accepting:
            self._running.clear()
            self._restarting = asyncio.create_task(self._restart(error), context=_fresh())

    def _begin(self) -> None:
        self._in_progress += 1
        self._idle.clear()
        self._metrics.in_progress(self._in_progress)

    def _end(self) -> None:
        self._in_progress -= 1
        if self._in_progress == 0:
            self._idle.set()
        self._metrics.in_progress(self._in_progress)

    # -- supervision -------------------------------------------------------------------------

    async def _restart(self, error: BaseException) -> None:
        """Replace the crashed instance with a fresh one, backing off while starts fail."""
        await self._idle.wait()
        crashed, self._actor = self._actor, None
        if crashed is not None:
            await _quietly(crashed.on_failure(error), self.name, "on_failure")
            await _quietly(crashed.on_stop(), self.name, "on_stop")
        attempt = self._crash_streak
        while True:
            await asyncio.sleep(self.backoff.delay(attempt))
            fresh = self.factory()
            try:
                await fresh.on_start()
            except Exception:
                log.exception("actor restart failed", extra={"actor": self.name})
                attempt += 1
                continue
            break
        self._actor = fresh
        self._crash_streak = attempt + 1
        self.stats.restarts += 1
        self._metrics.restarted()
        log.warning("actor restarted", extra={"actor": self.name, "restarts": self.stats.restarts})
        self._restarting = None
        self._running.set()


def _answer(envelope: _Envelope, *, result: Any = None, error: BaseException | None = None) -> None:
    reply = envelope.reply
    if reply is None:
        if error is not None and not isinstance(error, DomainError):
            log.warning("told message failed: %r", error)
        return
    if reply.done():
        return
    if error is not None:
        reply.set_exception(error)
    else:
        reply.set_result(result)


async def _cancel(*tasks: asyncio.Task[Any] | None) -> None:
    pending = [task for task in tasks if task is not None]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def _quietly(coro: Awaitable[None], actor: str, hook: str) -> None:
    try:
        await coro
    except Exception:
        log.exception("actor %s hook failed", hook, extra={"actor": actor})


def _fresh() -> contextvars.Context:
    """A context with no request in it, for work the actor does on its own behalf."""
    return contextvars.Context()
