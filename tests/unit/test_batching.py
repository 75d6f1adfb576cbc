"""``gateway_core.batching.Batcher``: calls made while a batch is out go together in the
next one; a failure of one item or of a whole batch reaches exactly its callers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway_core.batching import Batcher


class Runner:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_batch: Exception | None = None

    async def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail_batch is not None:
            raise self.fail_batch
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def test_a_lone_call_goes_at_once_and_those_arriving_meanwhile_go_together():
    run = Runner()
    batcher: Batcher[int, int] = Batcher(run, max_items=3)
    assert await batcher.call(0) == 0
    run.gate.clear()
    first = asyncio.create_task(batcher.call(2))
    await asyncio.sleep(0)  # the first batch is out, waiting on the gate
    rest = [asyncio.create_task(batcher.call(i)) for i in (4, 6, 8, 10)]
    await asyncio.sleep(0)
    run.gate.set()
    assert await first == 20
    assert [await t for t in rest] == [40, 60, 80, 100]
    assert run.batches == [[0], [2], [4, 6, 8], [10]]


async def test_an_item_that_fails_fails_alone_and_a_failed_batch_fails_its_callers():
    run = Runner()
    batcher: Batcher[int, int] = Batcher(run)
    run.gate.clear()
    odd, even = batcher.call(1), batcher.call(2)
    calls = asyncio.gather(odd, even, return_exceptions=True)
    await asyncio.sleep(0)
    run.gate.set()
    failed, answered = await calls
    assert isinstance(failed, ValueError) and answered == 20
    run.fail_batch = RuntimeError("database is locked")
    with pytest.raises(RuntimeError, match="locked"):
        await batcher.call(4)
    run.fail_batch = None
    assert await batcher.call(6) == 60  # the next batch runs as before


async def test_a_caller_that_gives_up_leaves_the_others_their_answers():
    run = Runner()
    batcher: Batcher[int, int] = Batcher(run)
    run.gate.clear()
    impatient = asyncio.create_task(batcher.call(2))
    patient = asyncio.create_task(batcher.call(4))
    await asyncio.sleep(0)
    impatient.cancel()
    run.gate.set()
    assert await patient == 40
    with pytest.raises(asyncio.CancelledError):
        await impatient
