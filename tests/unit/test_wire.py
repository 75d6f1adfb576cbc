"""One encoding per push, written straight to the socket where the server allows it."""

from __future__ import annotations

import asyncio
import functools
import socket

import pytest
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import tcp
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from sessions_app import frames
from sessions_app.flow import (
    WRITE,
    AsyncioSendBuffer,
    TwistedSendBuffer,
    UnboundedSendBuffer,
    send_buffer_for,
)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_wire_is_what_websockets_would_send(size):
    text = "é" * (size // 2) + "x" * (size % 2)  # multi-byte characters: length in bytes
    expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
    assert frames.wire(text) == expected


# Daphne (Twisted transport, autobahn protocol) ----------------------------------------
class FakeSocket:
    def __init__(self, takes: int | None = None, error: OSError | None = None) -> None:
        self.takes = takes  # bytes the kernel accepts per send; None: everything
        self.error = error
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        taken = data if self.takes is None else data[: self.takes]
        self.sent.append(bytes(taken))
        return len(taken)


class FakeTwistedTransport:
    """The attributes of ``twisted.internet.tcp.Connection`` the fast path reads."""

    bufferSize = 65536  # noqa: N815 (Twisted's name)
    TLS = False

    def __init__(self, sock: FakeSocket) -> None:
        self.socket = sock
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.connected = True
        self.disconnecting = False
        self._writeDisconnected = False
        self.producer = object()
        self.producerPaused = False
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self._tempDataLen += len(data)


class FakeAutobahnProtocol:
    STATE_OPEN = WebSocketProtocol.STATE_OPEN
    SEND_STATE_GROUND = WebSocketProtocol.SEND_STATE_GROUND

    def __init__(self, transport: FakeTwistedTransport) -> None:
        self.transport = transport
        self.state = WebSocketProtocol.STATE_OPEN
        self.send_state = WebSocketProtocol.SEND_STATE_GROUND
        self._perMessageCompress = None


def handle_reply(protocol, message):
    """Stands in for daphne's ``Server.handle_reply``."""


async def no_send(message):
    pass


def daphne_buffer(sock: FakeSocket) -> tuple[FakeAutobahnProtocol, TwistedSendBuffer]:
    protocol = FakeAutobahnProtocol(FakeTwistedTransport(sock))
    buffer = send_buffer_for(functools.partial(handle_reply, protocol), max_bytes=1 << 20)
    assert isinstance(buffer, TwistedSendBuffer)
    return protocol, buffer


def test_twisted_transports_still_have_what_the_fast_path_reads():
    # If Twisted renames these, ``write_wire`` quietly falls back to ``transport.write``:
    # correct but slow, so this test says so instead.
    with socket.socket() as sock:
        transport = tcp.Connection(sock, None, reactor=object())
        buffer = TwistedSendBuffer(transport, no_send, max_bytes=1 << 20,
                                   protocol=FakeAutobahnProtocol(FakeTwistedTransport(FakeSocket())))
        assert buffer.sock is sock


def test_idle_twisted_transport_is_written_on_the_socket_directly():
    sock = FakeSocket()
    protocol, buffer = daphne_buffer(sock)
    wire = frames.wire('{"type":"push"}')
    assert buffer.write_wire(wire) is True
    assert sock.sent == [wire]
    assert protocol.transport.written == []


def test_what_the_kernel_does_not_take_goes_to_twisted():
    sock = FakeSocket(takes=3)
    protocol, buffer = daphne_buffer(sock)
    wire = frames.wire("x" * 50)
    assert buffer.write_wire(wire) is True
    assert sock.sent == [wire[:3]]
    assert protocol.transport.written == [wire[3:]]
    # Twisted now holds bytes: the next frame queues behind them, never overtakes them.
    assert buffer.write_wire(wire) is True
    assert sock.sent == [wire[:3]]
    assert protocol.transport.written == [wire[3:], wire]


@pytest.mark.parametrize("error", [BlockingIOError(), ConnectionResetError()])
def test_socket_errors_leave_the_frame_to_twisted(error):
    protocol, buffer = daphne_buffer(FakeSocket(error=error))
    wire = frames.wire("hello")
    assert buffer.write_wire(wire) is True
    assert protocol.transport.written == [wire]


@pytest.mark.parametrize("change", [
    lambda p: setattr(p.transport, "dataBuffer", b"abc"),
    lambda p: setattr(p.transport, "TLS", True),
    lambda p: setattr(p.transport, "disconnecting", True),
])
def test_busy_or_special_transports_buffer_through_twisted(change):
    sock = FakeSocket()
    protocol, buffer = daphne_buffer(sock)
    change(protocol)
    wire = frames.wire("hello")
    assert buffer.write_wire(wire) is True
    assert sock.sent == []
    assert protocol.transport.written == [wire]


@pytest.mark.parametrize("change", [
    lambda p: setattr(p, "state", WebSocketProtocol.STATE_CLOSING),
    lambda p: setattr(p, "send_state", WebSocketProtocol.SEND_STATE_INSIDE_MESSAGE),
    lambda p: setattr(p, "_perMessageCompress", object()),
])
def test_autobahn_writes_itself_unless_open_and_uncompressed(change):
    sock = FakeSocket()
    protocol, buffer = daphne_buffer(sock)
    change(protocol)
    assert buffer.write_wire(frames.wire("hello")) is False
    assert sock.sent == [] and protocol.transport.written == []


# uvicorn (asyncio transport, websockets' sans-I/O protocol) ----------------------------
class FakeAsyncioTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0


class FakeSansIOProtocol:
    """What uvicorn's ``WebSocketsSansIOProtocol`` exposes, around a real ServerProtocol."""

    def __init__(self) -> None:
        self.transport = FakeAsyncioTransport()
        self.writable = asyncio.Event()
        self.writable.set()
        self.conn = ServerProtocol()
        self.conn.state = State.OPEN
        self.handshake_complete = True
        self.initial_response = None
        self.close_sent = False
        self.disconnected = False

    async def send(self, message: dict) -> None:
        raise AssertionError("write_wire must not go through send")


async def test_open_uvicorn_connection_takes_the_wire_bytes():
    protocol = FakeSansIOProtocol()
    buffer = send_buffer_for(protocol.send, max_bytes=1 << 20)
    assert isinstance(buffer, AsyncioSendBuffer)
    wire = frames.wire('{"type":"push"}')
    assert buffer.offer('{"type":"push"}') == WRITE
    assert buffer.write_wire(wire) is True
    assert protocol.transport.written == [wire]


@pytest.mark.parametrize("change", [
    lambda p: setattr(p, "close_sent", True),
    lambda p: setattr(p, "disconnected", True),
    lambda p: setattr(p.conn, "state", State.CLOSING),
    lambda p: setattr(p.conn, "extensions", [object()]),
    lambda p: setattr(p, "handshake_complete", False),
])
async def test_uvicorn_writes_itself_unless_open_and_plain(change):
    protocol = FakeSansIOProtocol()
    buffer = send_buffer_for(protocol.send, max_bytes=1 << 20)
    change(protocol)
    assert buffer.write_wire(frames.wire("hello")) is False
    assert protocol.transport.written == []


async def test_other_servers_never_take_wire_bytes():
    queue: asyncio.Queue[dict] = asyncio.Queue()
    buffer = send_buffer_for(queue.put, max_bytes=1)
    assert isinstance(buffer, UnboundedSendBuffer)
    assert buffer.write_wire(b"\x81\x00") is False


@pytest.mark.parametrize("text", ['{"type":"ping"}', '{"type": "ping"}', ' {"type":"ping"} '])
def test_every_spelling_of_ping_parses_the_same(text):
    assert frames.parse(text) == {"type": "ping"}


def test_near_pings_are_still_checked():
    with pytest.raises(frames.BadFrame):
        frames.parse('{"type":"pong"}')
