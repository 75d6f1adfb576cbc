from __future__ import annotations

import asyncio
import functools

from sessions_app.flow import (
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


def test_plain_function_gets_an_unbounded_buffer():
    async def send(message):
        pass

    buffer = send_buffer_for(send, max_bytes=1024)
    assert isinstance(buffer, UnboundedSendBuffer)
    assert buffer.admit(10**9) is True
    assert buffer.abort_if_stuck() is None


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
    buffer = TwistedSendBuffer(transport, max_bytes=1100)
    assert buffer.limit == 100
    assert all(buffer.admit(1000) for _ in range(5))  # not paused: no bound
    assert buffer.waiting_bytes == 0

    transport.producerPaused = True
    assert buffer.admit(60) is True
    assert buffer.admit(40) is True
    assert buffer.waiting_bytes == 100
    assert buffer.admit(1) is False

    transport.producerPaused = False
    assert buffer.admit(500) is True
    assert buffer.waiting_bytes == 0
    transport.producerPaused = True
    assert buffer.admit(100) is True
    assert buffer.admit(1) is False


def test_limit_never_goes_negative():
    transport = FakeTransport(producer=object(), buffer_size=65536)
    buffer = TwistedSendBuffer(transport, max_bytes=1024)
    assert buffer.limit == 0
    transport.producerPaused = True
    assert buffer.admit(1) is False


def test_registers_a_noop_producer_only_when_none_exists():
    bare = FakeTransport()
    TwistedSendBuffer(bare, max_bytes=1 << 20)
    assert len(bare.registered) == 1
    producer, streaming = bare.registered[0]
    assert isinstance(producer, _NoopProducer)
    assert streaming is True
    producer.pauseProducing()
    producer.resumeProducing()
    producer.stopProducing()

    existing = object()
    served = FakeTransport(producer=existing)
    TwistedSendBuffer(served, max_bytes=1 << 20)
    assert served.registered == []
    assert served.producer is existing


async def test_abort_if_stuck_drops_a_client_that_stays_paused():
    transport = FakeTransport(producer=object())
    buffer = TwistedSendBuffer(transport, max_bytes=1 << 20)
    buffer.abort_after_s = 0.01
    buffer.abort_if_stuck()  # not paused: nothing scheduled
    transport.producerPaused = True
    buffer.abort_if_stuck()
    await asyncio.sleep(0.05)
    assert transport.aborted == 1


async def test_abort_if_stuck_spares_a_client_that_drained():
    transport = FakeTransport(producer=object())
    buffer = TwistedSendBuffer(transport, max_bytes=1 << 20)
    buffer.abort_after_s = 0.01
    transport.producerPaused = True
    buffer.abort_if_stuck()
    transport.producerPaused = False
    await asyncio.sleep(0.05)
    assert transport.aborted == 0
