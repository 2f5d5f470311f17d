"""Batching: each caller gets its own result; group commit gathers what arrives meanwhile and
leaves out the callers that gave up."""

from __future__ import annotations

import asyncio

import pytest

from storage.batching import GroupCommit, TickBatch


class Recorder:
    """A flush that takes a while and remembers what each batch carried."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.release.wait()
        return [item * 10 for item in items]


async def test_group_commit_gathers_what_arrives_while_a_batch_is_flushed() -> None:
    flush = Recorder()
    group = GroupCommit(flush, name="test")
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)  # the first batch is under way
    later = [asyncio.create_task(group.submit(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    flush.release.set()
    assert await asyncio.gather(first, *later) == [10, 20, 30, 40]
    assert flush.batches == [[1], [2, 3, 4]]


async def test_a_caller_that_gave_up_is_left_out_of_its_batch() -> None:
    flush = Recorder()
    group = GroupCommit(flush, name="test")
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(group.submit(n)) for n in (2, 3)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # its deadline passed while the first batch was being flushed
    flush.release.set()
    assert await first == 10
    assert await waiting[1] == 30
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
    assert flush.batches == [[1], [3]]


async def test_a_failed_flush_fails_every_call_it_carried() -> None:
    async def broken(items: list[int]) -> list[int]:
        raise ConnectionError("gone")

    group = GroupCommit(broken, name="test")
    batch = TickBatch(broken)
    for call in (group.submit, batch):
        results = await asyncio.gather(call(1), call(2), return_exceptions=True)
        assert [type(result) for result in results] == [ConnectionError, ConnectionError]
