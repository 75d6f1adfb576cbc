"""The RocketMQ consumer's self-repair, against fake client consumers (no broker needed):
one rebuild at a time, and a receive cancelled by the client is not the end of consuming."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from gateway_core.brokers import rocketmq
from gateway_core.brokers.rocketmq import RocketMQBroker


class FakeConsumer:
    """``receive_async`` answers from a script: an exception, "cancel", or a list of bodies;
    an exhausted script leaves the receive pending (a long poll) until shutdown."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.pending: list[concurrent.futures.Future[Any]] = []
        self.acked: list[bytes] = []
        self.shut_down = False

    def receive_async(self, batch: int, invisible_s: int) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        step = self.script.pop(0) if self.script else None
        if isinstance(step, BaseException):
            future.set_exception(step)
        elif step == "cancel":
            future.cancel()
        elif step is None:
            self.pending.append(future)
        else:
            future.set_result([SimpleNamespace(body=b, message_id=b.decode()) for b in step])
        return future

    def ack_async(self, message: Any) -> None:
        self.acked.append(message.body)

    def shutdown(self) -> None:
        self.shut_down = True
        for future in self.pending:
            future.cancel()  # what the client does to a receive in flight


class ScriptedBroker(RocketMQBroker):
    rebuild_after_failures = 2

    def __init__(self, scripts: list[list[Any]]) -> None:
        super().__init__(node_id="n1", config={"endpoint": "127.0.0.1:1"})
        self.scripts = scripts
        self.built: list[FakeConsumer] = []
        self._lock = threading.Lock()

    def _new_consumer(self) -> FakeConsumer:
        with self._lock:
            consumer = FakeConsumer(self.scripts.pop(0) if self.scripts else [])
            self.built.append(consumer)
            return consumer


@pytest.fixture(autouse=True)
def no_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = asyncio.sleep
    monkeypatch.setattr(rocketmq.asyncio, "sleep", lambda s: real_sleep(0))


async def consume_until(broker: ScriptedBroker, got: list[bytes], count: int) -> None:
    async def handler(raw: bytes) -> None:
        got.append(raw)

    task = asyncio.create_task(broker.consume(handler))
    try:
        async with asyncio.timeout(5):
            while len(got) < count:
                assert not task.done(), task
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_receivers_failing_together_rebuild_the_consumer_once() -> None:
    down = RuntimeError("proxy down")
    # Both receivers fail twice on the first consumer; the rebuilt one delivers.
    broker = ScriptedBroker([[down, down, down, down], [[b"m1"], [b"m2"]]])
    got: list[bytes] = []
    await consume_until(broker, got, 2)
    assert sorted(got) == [b"m1", b"m2"]
    assert len(broker.built) == 2, "one rebuild, not one per receiver"
    assert broker.built[0].shut_down and not broker.built[1].shut_down
    assert broker.consumer_error is None


async def test_a_receive_cancelled_by_the_client_does_not_stop_consuming() -> None:
    broker = ScriptedBroker([["cancel", "cancel", [b"m1"]]])
    got: list[bytes] = []
    await consume_until(broker, got, 1)
    assert got == [b"m1"]


async def test_cancelling_the_consume_task_still_stops_it() -> None:
    broker = ScriptedBroker([[]])  # receives stay pending
    task = asyncio.create_task(broker.consume(lambda raw: asyncio.sleep(0)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert broker.consuming is False


def test_shutdown_noise_of_cancelled_receives_is_dropped() -> None:
    noise = rocketmq._DropRpcNoise()
    cancelled: concurrent.futures.Future[Any] = concurrent.futures.Future()
    cancelled.cancel()
    try:
        raise AttributeError("'NoneType' object has no attribute 'submit'")
    except AttributeError as exc:
        info = (type(exc), exc, exc.__traceback__)
    record = logging.LogRecord("concurrent.futures", logging.ERROR, __file__, 1,
                               "exception calling callback for %r", (cancelled,), info)
    assert noise.filter(record) is False
    # The same error on a future that was not cancelled is a real error: kept.
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()
    done.set_result(None)
    record.args = (done,)
    assert noise.filter(record) is True
