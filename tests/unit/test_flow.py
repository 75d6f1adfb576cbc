from __future__ import annotations

import asyncio
import functools

import pytest

from sessions_app.flow import (
    QUEUED,
    TOO_SLOW,
    WRITE,
    AsyncioSendBuffer,
    TwistedSendBuffer,
    UnboundedSendBuffer,
    _NoopProducer,
    send_buffer_for,
)


class FakeTransport:
    def __init__(self, *, producer: object | None = None, buffer_size: int = 65536) -> None:
        self.producerPaused = False
        self.bufferSize = buffer_size
        self.producer = producer
        self.registered: list[tuple[object, bool]] = []
        self.aborted = 0

    def registerProducer(self, producer, streaming):  # noqa: N802 (Twisted's name)
        self.producer = producer
        self.registered.append((producer, streaming))

    def abortConnection(self):  # noqa: N802
        self.aborted += 1


class FakeProtocol:
    def __init__(self, transport) -> None:
        self.transport = transport


def handle_reply(protocol, message):
    """Stands in for daphne's ``Server.handle_reply``."""


async def no_send(message):
    pass


def test_plain_function_gets_an_unbounded_buffer():
    async def send(message):
        pass

    buffer = send_buffer_for(send, max_bytes=1024)
    assert isinstance(buffer, UnboundedSendBuffer)
    assert buffer.offer("x" * 10**6) == WRITE


async def test_unbounded_buffer_closes_through_send():
    sent = []

    async def send(message):
        sent.append(message)

    await UnboundedSendBuffer(send).close({"type": "websocket.close", "code": 4010})
    assert sent == [{"type": "websocket.close", "code": 4010}]


def test_partial_without_a_twisted_transport_is_unbounded():
    assert isinstance(send_buffer_for(functools.partial(handle_reply, object()), max_bytes=1),
                      UnboundedSendBuffer)
    assert isinstance(send_buffer_for(functools.partial(handle_reply), max_bytes=1),
                      UnboundedSendBuffer)


def test_daphne_style_send_gets_a_twisted_buffer():
    transport = FakeTransport(producer=object())
    buffer = send_buffer_for(functools.partial(handle_reply, FakeProtocol(transport)),
                             max_bytes=100_000)
    assert isinstance(buffer, TwistedSendBuffer)
    assert buffer.transport is transport
    assert buffer.limit == 100_000 - 65536


def test_admits_while_not_paused_counts_while_paused_and_resets():
    transport = FakeTransport(producer=object(), buffer_size=1000)
    buffer = TwistedSendBuffer(transport, no_send, max_bytes=1100)
    assert buffer.limit == 100
    assert all(buffer.offer("x" * 1000) == WRITE for _ in range(5))  # not paused: no bound
    assert buffer.waiting_bytes == 0

    transport.producerPaused = True
    assert buffer.offer("x" * 60) == WRITE
    assert buffer.offer("x" * 40) == WRITE
    assert buffer.waiting_bytes == 100
    assert buffer.offer("x") == TOO_SLOW

    transport.producerPaused = False
    assert buffer.offer("x" * 500) == WRITE
    assert buffer.waiting_bytes == 0
    transport.producerPaused = True
    assert buffer.offer("x" * 100) == WRITE
    assert buffer.offer("x") == TOO_SLOW


def test_limit_never_goes_negative():
    transport = FakeTransport(producer=object(), buffer_size=65536)
    buffer = TwistedSendBuffer(transport, no_send, max_bytes=1024)
    assert buffer.limit == 0
    transport.producerPaused = True
    assert buffer.offer("x") == TOO_SLOW


def test_registers_a_noop_producer_only_when_none_exists():
    bare = FakeTransport()
    TwistedSendBuffer(bare, no_send, max_bytes=1 << 20)
    assert len(bare.registered) == 1
    producer, streaming = bare.registered[0]
    assert isinstance(producer, _NoopProducer)
    assert streaming is True
    producer.pauseProducing()
    producer.resumeProducing()
    producer.stopProducing()

    existing = object()
    served = FakeTransport(producer=existing)
    TwistedSendBuffer(served, no_send, max_bytes=1 << 20)
    assert served.registered == []
    assert served.producer is existing


async def test_abort_if_stuck_drops_a_client_that_stays_paused():
    transport = FakeTransport(producer=object())
    buffer = TwistedSendBuffer(transport, no_send, max_bytes=1 << 20)
    buffer.abort_after_s = 0.01
    buffer.abort_if_stuck()  # not paused: nothing scheduled
    transport.producerPaused = True
    buffer.abort_if_stuck()
    await asyncio.sleep(0.05)
    assert transport.aborted == 1


async def test_abort_if_stuck_spares_a_client_that_drained():
    transport = FakeTransport(producer=object())
    buffer = TwistedSendBuffer(transport, no_send, max_bytes=1 << 20)
    buffer.abort_after_s = 0.01
    transport.producerPaused = True
    buffer.abort_if_stuck()
    transport.producerPaused = False
    await asyncio.sleep(0.05)
    assert transport.aborted == 0


async def test_twisted_close_sends_then_watches_a_paused_client():
    sent = []

    async def send(message):
        sent.append(message)

    transport = FakeTransport(producer=object())
    buffer = TwistedSendBuffer(transport, send, max_bytes=1 << 20)
    buffer.abort_after_s = 0.01
    transport.producerPaused = True
    await buffer.close({"type": "websocket.close", "code": 4030})
    assert sent == [{"type": "websocket.close", "code": 4030}]
    await asyncio.sleep(0.05)
    assert transport.aborted == 1


# --- uvicorn (an asyncio protocol whose send waits while the transport is full) -----------

class ClientGone(OSError):
    """Stands in for uvicorn's ``ClientDisconnected``."""


class FakeAsyncioTransport:
    def __init__(self) -> None:
        self.buffered = 0
        self.aborted = 0

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted += 1


class FakeUvicornProtocol:
    """Like uvicorn's WebSocket protocols: ``send`` awaits ``writable`` first."""

    def __init__(self) -> None:
        self.transport = FakeAsyncioTransport()
        self.writable = asyncio.Event()
        self.writable.set()
        self.disconnected = False
        self.sent: list[dict] = []
        self.waited = 0

    async def send(self, message: dict) -> None:
        if not self.writable.is_set():
            self.waited += 1
        await self.writable.wait()
        if self.disconnected:
            raise ClientGone()
        self.sent.append(message)

    def texts(self) -> list[str]:
        return [m["text"] for m in self.sent if m["type"] == "websocket.send"]


def uvicorn_buffer(max_bytes: int = 1000) -> tuple[FakeUvicornProtocol, AsyncioSendBuffer]:
    protocol = FakeUvicornProtocol()
    buffer = send_buffer_for(protocol.send, max_bytes=max_bytes)
    assert isinstance(buffer, AsyncioSendBuffer)
    buffer.abort_after_s = 0.02
    return protocol, buffer


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_uvicorn_style_send_gets_an_asyncio_buffer():
    protocol, buffer = uvicorn_buffer()
    assert buffer.transport is protocol.transport
    assert buffer.writable is protocol.writable
    # A bound method of something else (the test communicator's queue) is unbounded.
    queue: asyncio.Queue[dict] = asyncio.Queue()
    assert isinstance(send_buffer_for(queue.put, max_bytes=1), UnboundedSendBuffer)


async def test_writable_connection_writes_at_once_and_starts_no_task():
    _, buffer = uvicorn_buffer()
    for _ in range(3):
        assert buffer.offer("x" * 5000) == WRITE  # the bound applies only once it waits
    assert buffer.writer is None
    assert not buffer.queue


async def test_frames_queue_while_not_writable_and_drain_in_order():
    protocol, buffer = uvicorn_buffer()
    protocol.writable.clear()
    protocol.transport.buffered = 100
    assert buffer.offer("a" * 10) == QUEUED
    assert buffer.offer("b" * 20) == QUEUED
    assert buffer.queued_bytes == 30
    await settle()
    assert protocol.sent == []  # nothing written while the transport is full
    protocol.writable.set()
    # Writable again, but frames still wait: a new frame queues behind them.
    assert buffer.offer("c") == QUEUED
    await settle()
    assert protocol.texts() == ["a" * 10, "b" * 20, "c"]
    assert buffer.queued_bytes == 0
    assert buffer.writer is None
    assert protocol.waited == 0  # the writer never called send while it would wait
    assert buffer.offer("d") == WRITE


async def test_writer_waits_again_when_the_transport_fills_up():
    protocol, buffer = uvicorn_buffer()
    protocol.writable.clear()
    buffer.offer("1")
    buffer.offer("2")
    original = protocol.send

    async def send_and_fill(message: dict) -> None:
        await original(message)
        protocol.writable.clear()  # this write paused the transport again

    buffer.send = send_and_fill
    protocol.writable.set()
    await settle()
    assert protocol.texts() == ["1"]
    protocol.writable.set()
    await settle()
    assert protocol.texts() == ["1", "2"]
    assert protocol.waited == 0


async def test_over_the_bound_counts_queue_and_transport_buffer():
    protocol, buffer = uvicorn_buffer(max_bytes=1000)
    protocol.writable.clear()
    protocol.transport.buffered = 900
    assert buffer.offer("x" * 60) == QUEUED  # 960 waiting
    assert buffer.offer("x" * 40) == QUEUED  # 1000 waiting: at the bound, not past it
    assert buffer.offer("x") == TOO_SLOW
    assert buffer.too_slow is True


async def test_too_slow_close_drops_the_queue_and_aborts_if_stuck():
    protocol, buffer = uvicorn_buffer(max_bytes=100)
    protocol.writable.clear()
    protocol.transport.buffered = 90
    assert buffer.offer("x" * 10) == QUEUED
    assert buffer.offer("x" * 10) == TOO_SLOW
    close = {"type": "websocket.close", "code": 4030, "reason": "too slow"}
    await asyncio.wait_for(buffer.close(close), 0.1)  # never waits for the client
    assert [m for m, _ in buffer.queue] == [close]  # the frames are gone, the close waits
    assert buffer.queued_bytes == 0
    await asyncio.sleep(0.05)
    assert protocol.transport.aborted == 1
    assert not buffer.queue
    assert protocol.sent == []


async def test_close_queues_behind_frames_and_spares_a_client_that_drains():
    protocol, buffer = uvicorn_buffer()
    protocol.writable.clear()
    protocol.transport.buffered = 10
    assert buffer.offer("last push") == QUEUED
    close = {"type": "websocket.close", "code": 4012, "reason": "draining"}
    await asyncio.wait_for(buffer.close(close), 0.1)
    protocol.transport.buffered = 0
    protocol.writable.set()
    await settle()
    assert protocol.sent == [{"type": "websocket.send", "text": "last push"}, close]
    await asyncio.sleep(0.05)
    assert protocol.transport.aborted == 0


async def test_close_of_a_writable_client_is_sent_at_once():
    protocol, buffer = uvicorn_buffer()
    close = {"type": "websocket.close", "code": 4010, "reason": ""}
    await buffer.close(close)
    assert protocol.sent == [close]
    assert buffer.writer is None
    await asyncio.sleep(0.05)
    assert protocol.transport.aborted == 0


async def test_close_of_a_client_already_gone_is_quiet():
    protocol, buffer = uvicorn_buffer()
    protocol.disconnected = True
    await buffer.close({"type": "websocket.close", "code": 4010, "reason": ""})
    assert protocol.sent == []


@pytest.mark.parametrize("error", [ClientGone, RuntimeError])
async def test_writer_stops_and_forgets_the_queue_when_sending_fails(error):
    protocol, buffer = uvicorn_buffer()
    protocol.writable.clear()
    buffer.offer("a")
    buffer.offer("b")

    async def failing(message: dict) -> None:
        raise error()

    buffer.send = failing
    protocol.writable.set()
    await settle()
    assert not buffer.queue
    assert buffer.queued_bytes == 0
    assert buffer.writer is None
