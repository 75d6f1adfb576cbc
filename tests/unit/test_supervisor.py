"""Supervised loops: restarted with back-off, counted, and never swallowing a cancel."""

from __future__ import annotations

import asyncio

import pytest

from gateway_core import metrics
from gateway_node.supervisor import Supervised


class Script:
    """A loop that fails ``failures`` times, then waits until cancelled; the sleeps it was
    given and the clock are the test's own."""

    def __init__(self, failures: int, *, run_s: float = 0.0) -> None:
        self.failures = failures
        self.run_s = run_s
        self.runs = 0
        self.now = 0.0
        self.slept: list[float] = []
        self.forever = asyncio.Event()

    async def loop(self) -> None:
        self.runs += 1
        self.now += self.run_s
        if self.runs <= self.failures:
            raise RuntimeError(f"failure {self.runs}")
        await self.forever.wait()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


async def _until(predicate, *, steps: int = 1000) -> None:
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached")


async def test_a_failing_loop_is_restarted_with_doubling_backoff_and_counted() -> None:
    script = Script(failures=8)
    loop = Supervised("t-restart", script.loop, node_id="sup-1", sleep=script.sleep,
                      clock=lambda: script.now)
    task = asyncio.create_task(loop.run())
    await _until(lambda: script.runs == 9)
    assert script.slept == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert loop.restarts == 8 and loop.running is True
    assert metrics.LOOP_RESTARTS.labels("sup-1", "t-restart")._value.get() == 8
    assert metrics.LOOP_RUNNING.labels("sup-1", "t-restart")._value.get() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.running is False
    assert metrics.LOOP_RUNNING.labels("sup-1", "t-restart")._value.get() == 0


async def test_backoff_starts_over_after_a_healthy_run() -> None:
    script = Script(failures=3, run_s=61.0)  # every run lasted longer than healthy_after_s
    loop = Supervised("t-healthy", script.loop, node_id="sup-2", sleep=script.sleep,
                      clock=lambda: script.now)
    task = asyncio.create_task(loop.run())
    await _until(lambda: script.runs == 4)
    assert script.slept == [0.5, 0.5, 0.5]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_loop_that_returns_is_restarted_too() -> None:
    runs: list[int] = []
    gate = asyncio.Event()

    async def returns() -> None:
        runs.append(1)
        if len(runs) >= 3:
            await gate.wait()

    async def no_sleep(seconds: float) -> None:
        pass

    loop = Supervised("t-return", returns, node_id="sup-3", sleep=no_sleep)
    task = asyncio.create_task(loop.run())
    await _until(lambda: len(runs) == 3)
    assert loop.restarts == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_down_while_waiting_to_restart() -> None:
    release = asyncio.Event()
    waits: list[float] = []

    async def held_sleep(seconds: float) -> None:
        waits.append(seconds)
        await release.wait()

    async def fails() -> None:
        raise ValueError("boom")

    loop = Supervised("t-down", fails, node_id="sup-4", sleep=held_sleep)
    task = asyncio.create_task(loop.run())
    await _until(lambda: waits == [0.5])
    assert loop.running is False
    assert metrics.LOOP_RUNNING.labels("sup-4", "t-down")._value.get() == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
