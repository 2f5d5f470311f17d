"""The actor runtime's promises: typed dispatch, backpressure, deadlines, supervision, drain."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY

from actors import Actor, ActorKey, ActorSystem, Message, deadline_scope, handler
from actors.errors import ActorStopped, DeadlineExceeded, NotFound, Overloaded
from actors.runtime import ActorRef, Backoff, remaining
from observability.logging import request_id


@dataclass(frozen=True)
class Echo(Message[str]):
    text: str


@dataclass(frozen=True)
class Wait(Message[str]):
    gate: asyncio.Event
    label: str = ""


@dataclass(frozen=True)
class Sleep(Message[float | None]):
    seconds: float


@dataclass(frozen=True)
class Crash(Message[None]):
    pass


@dataclass(frozen=True)
class Missing(Message[None]):
    pass


@dataclass(frozen=True)
class WhoAsks(Message[str | None]):
    pass


@dataclass(frozen=True)
class Unhandled(Message[None]):
    pass


@dataclass
class Journal:
    """What the actors under test did, shared across restarts."""

    events: list[str] = field(default_factory=list)
    handled: list[str] = field(default_factory=list)
    running: int = 0
    peak: int = 0


class Probe(Actor):
    instances = 0

    def __init__(self, journal: Journal, name: str = "probe") -> None:
        Probe.instances += 1
        self.journal = journal
        self.name = name
        self.generation = Probe.instances

    async def on_start(self) -> None:
        self.journal.events.append(f"{self.name}:start")

    async def on_stop(self) -> None:
        self.journal.events.append(f"{self.name}:stop")

    async def on_failure(self, error: BaseException) -> None:
        self.journal.events.append(f"{self.name}:failure:{error}")

    @handler
    async def echo(self, message: Echo) -> str:
        return f"{message.text} from #{self.generation}"

    @handler
    async def wait(self, message: Wait) -> str:
        self.journal.running += 1
        self.journal.peak = max(self.journal.peak, self.journal.running)
        try:
            await message.gate.wait()
        finally:
            self.journal.running -= 1
        self.journal.handled.append(message.label)
        return message.label

    @handler
    async def sleep(self, message: Sleep) -> float | None:
        budget = remaining()
        self.journal.handled.append("sleep")
        await asyncio.sleep(message.seconds)
        return budget

    @handler
    async def crash(self, message: Crash) -> None:
        raise RuntimeError("boom")

    @handler
    async def missing(self, message: Missing) -> None:
        raise NotFound("no such thing")

    @handler
    async def who(self, message: WhoAsks) -> str | None:
        return request_id.get()


def spawn(journal: Journal, **options: object) -> ActorRef[Probe]:
    options.setdefault("backoff", Backoff(initial=0.01, maximum=0.05))
    return ActorRef(lambda: Probe(journal), name="probe", **options)  # type: ignore[arg-type]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_ask_dispatches_on_message_type() -> None:
    ref = spawn(Journal())
    await ref.start()
    assert await ref.ask(Echo("hi")) == "hi from #" + str(Probe.instances)
    assert ref.stats.processed == 1
    await ref.stop()


async def test_full_mailbox_is_refused_at_once() -> None:
    journal = Journal()
    ref = spawn(journal, mailbox_size=2, concurrency=1)
    await ref.start()
    gate = asyncio.Event()
    rejected_before = sample("actor_messages_total", actor="probe", outcome="rejected")
    first = asyncio.create_task(ref.ask(Wait(gate, "1")))
    await asyncio.sleep(0.01)  # the worker has taken message 1; 2 and 3 fill the mailbox
    queued = [asyncio.create_task(ref.ask(Wait(gate, str(i)))) for i in (2, 3)]
    await asyncio.sleep(0)
    assert ref.mailbox_depth == 2

    with pytest.raises(Overloaded):
        await ref.ask(Wait(gate, "4"))

    assert ref.stats.rejected == 1
    assert sample("actor_messages_total", actor="probe", outcome="rejected") == rejected_before + 1
    gate.set()
    assert await asyncio.gather(first, *queued) == ["1", "2", "3"]
    assert journal.handled == ["1", "2", "3"]
    await ref.stop()


async def test_concurrency_is_bounded() -> None:
    journal = Journal()
    ref = spawn(journal, concurrency=3, mailbox_size=20)
    await ref.start()
    gate = asyncio.Event()
    asks = [asyncio.create_task(ref.ask(Wait(gate, str(i)))) for i in range(10)]
    await asyncio.sleep(0.02)
    assert ref.in_progress == 3
    assert ref.mailbox_depth == 7
    gate.set()
    await asyncio.gather(*asks)
    assert journal.peak == 3
    await ref.stop()


async def test_missed_deadline_answers_deadline_exceeded() -> None:
    journal = Journal()
    ref = spawn(journal)
    await ref.start()
    with pytest.raises(DeadlineExceeded):
        await ref.ask(Sleep(1.0), timeout=0.05)
    await asyncio.sleep(0.02)
    assert ref.stats.expired == 1  # the handler was cancelled at the deadline, not left running
    assert ref.in_progress == 0
    await ref.stop()


async def test_deadline_scope_is_passed_down_to_the_handler() -> None:
    ref = spawn(Journal())
    await ref.start()
    with deadline_scope(0.5):
        budget = await ref.ask(Sleep(0))
    assert budget is not None
    assert 0 < budget <= 0.5
    with deadline_scope(0.05), pytest.raises(DeadlineExceeded):
        await ref.ask(Sleep(1.0), timeout=10)  # the request's budget wins over a longer timeout
    await ref.stop()


async def test_message_whose_deadline_passed_in_the_mailbox_is_not_handled() -> None:
    journal = Journal()
    ref = spawn(journal, concurrency=1)
    await ref.start()
    gate = asyncio.Event()
    blocker = asyncio.create_task(ref.ask(Wait(gate, "blocker")))
    await asyncio.sleep(0.01)
    with pytest.raises(DeadlineExceeded):
        await ref.ask(Sleep(0), timeout=0.05)
    gate.set()
    await blocker
    await asyncio.sleep(0.01)
    assert "sleep" not in journal.handled
    await ref.stop()


async def test_domain_errors_are_answers_not_crashes() -> None:
    journal = Journal()
    ref = spawn(journal)
    await ref.start()
    with pytest.raises(NotFound):
        await ref.ask(Missing())
    assert ref.stats.failed == 0
    assert ref.stats.restarts == 0
    await ref.stop()


async def test_crashed_actor_is_restarted_fresh() -> None:
    journal = Journal()
    ref = spawn(journal)
    await ref.start()
    first = await ref.ask(Echo("a"))
    restarts_before = sample("actor_restarts_total", actor="probe")

    with pytest.raises(RuntimeError, match="boom"):
        await ref.ask(Crash())
    second = await ref.ask(Echo("b"))  # waits in the mailbox while the actor restarts

    assert first != second.replace("b", "a")  # a new instance answered
    assert ref.stats.failed == 1
    assert ref.stats.restarts == 1
    assert sample("actor_restarts_total", actor="probe") == restarts_before + 1
    assert journal.events == ["probe:start", "probe:failure:boom", "probe:stop", "probe:start"]
    await ref.stop()


async def test_unknown_message_type_crashes() -> None:
    ref = spawn(Journal())
    await ref.start()
    with pytest.raises(TypeError, match="no handler for Unhandled"):
        await ref.ask(Unhandled())
    await ref.ask(Echo("still here"))
    assert ref.stats.restarts == 1
    await ref.stop()


async def test_failing_restarts_back_off() -> None:
    journal = Journal()
    starts: list[float] = []
    attempts = iter([True, False, False, True])  # first start ok, two failed restarts, then ok

    class Flaky(Probe):
        async def on_start(self) -> None:
            starts.append(asyncio.get_running_loop().time())
            if not next(attempts):
                raise ConnectionError("database down")

    ref = ActorRef(lambda: Flaky(journal), name="flaky", backoff=Backoff(initial=0.02))
    await ref.start()
    with pytest.raises(RuntimeError):
        await ref.ask(Crash())
    await ref.ask(Echo("back"))
    gaps = [b - a for a, b in itertools.pairwise(starts[1:])]
    assert len(starts) == 4
    assert gaps[1] > gaps[0] * 1.5  # each failed start waits longer than the one before
    assert Backoff(initial=0.05, factor=2, maximum=1).delay(10) == 1
    await ref.stop()


async def test_told_message_runs_and_crash_restarts() -> None:
    journal = Journal()
    ref = spawn(journal)
    await ref.start()
    ref.tell(Crash())
    assert (await ref.ask(Echo("after"))).startswith("after")
    assert ref.stats.restarts == 1
    await ref.stop()


async def test_sender_context_reaches_the_handler() -> None:
    ref = spawn(Journal())
    await ref.start()
    token = request_id.set("req-42")
    try:
        assert await ref.ask(WhoAsks()) == "req-42"
    finally:
        request_id.reset(token)
    await ref.stop()


async def test_stop_drains_the_mailbox_in_order_then_refuses() -> None:
    journal = Journal()
    ref = spawn(journal, concurrency=1)
    await ref.start()
    gate = asyncio.Event()
    asks = [asyncio.create_task(ref.ask(Wait(gate, str(i)))) for i in range(5)]
    await asyncio.sleep(0.01)
    stopping = asyncio.create_task(ref.stop())
    await asyncio.sleep(0.01)
    with pytest.raises(ActorStopped):
        await ref.ask(Echo("late"))
    gate.set()
    await stopping
    assert await asyncio.gather(*asks) == ["0", "1", "2", "3", "4"]
    assert journal.handled == ["0", "1", "2", "3", "4"]
    assert journal.events[-1] == "probe:stop"


async def test_system_starts_in_order_and_stops_in_reverse() -> None:
    journal = Journal()
    keys = [ActorKey[Probe](name) for name in ("storage", "catalog", "orders")]
    async with ActorSystem() as system:
        for key in keys:
            await system.spawn(key, lambda key=key: Probe(journal, key.name))
        assert await system[keys[1]].ask(Echo("x")) == f"x from #{Probe.instances - 1}"
    assert journal.events == [
        "storage:start",
        "catalog:start",
        "orders:start",
        "orders:stop",
        "catalog:stop",
        "storage:stop",
    ]


async def test_a_hanging_on_stop_cannot_hold_up_shutdown() -> None:
    class Stuck(Probe):
        async def on_stop(self) -> None:
            await asyncio.Event().wait()

    ref = ActorRef(lambda: Stuck(Journal()), name="stuck")
    await ref.start()
    async with asyncio.timeout(5):
        await ref.stop(timeout=0.1)
    with pytest.raises(ActorStopped):
        await ref.ask(Echo("late"))
