"""The bench's raw WebSocket client: frame parsing against a fake transport, then 50 clients
against the real baseline server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from bench.loadgen import (
    Client,
    HandshakeError,
    Stats,
    connect_many,
    mask_payload,
    sent_time,
    wait_received,
)
from bench.run import baseline, token


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False
        self.aborted = False
        self.wrote = asyncio.Event()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))
        self.wrote.set()

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True


def server_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """An unmasked frame, as a server sends it."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big") + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload


def client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, unmasked payload) of the client's frames; asserts each is final and masked."""
    frames, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b0 & 0x80, "client frames are final"
        assert b1 & 0x80, "client frames must be masked"
        length, pos = b1 & 0x7F, pos + 2
        if length == 126:
            length, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
        mask, pos = data[pos:pos + 4], pos + 4
        frames.append((b0 & 0x0F, mask_payload(data[pos:pos + length], mask)))
        pos += length
    assert pos == len(data)
    return frames


def push(t: float, *, pad: int = 0) -> bytes:
    return json.dumps({"type": "push", "id": "1", "topic": None, "data": {"t": t},
                       "ts": 0, "pad": "x" * pad}, separators=(",", ":")).encode()


WELCOME = server_frame(1, b'{"type":"welcome","user":"u0"}')


def handshake(client: Client, *, accept: bytes | None = None) -> bytes:
    accept = accept or base64.b64encode(hashlib.sha1(
        client.key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def make_client(stats: Stats, **kwargs: float) -> tuple[Client, FakeTransport]:
    client = Client("ws://127.0.0.1:9/ws/?token=abc", stats, **kwargs)
    transport = FakeTransport()
    client.connection_made(transport)
    return client, transport


async def test_handshake_request_and_frames_in_the_same_chunk() -> None:
    stats = Stats()
    client, transport = make_client(stats)
    request = transport.written.pop()
    assert request.startswith(b"GET /ws/?token=abc HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:9\r\n" in request and b"Sec-WebSocket-Version: 13" in request
    assert b"Sec-WebSocket-Key: " + client.key + b"\r\n" in request
    sent = time.time() - 0.25
    client.data_received(handshake(client) + WELCOME + server_frame(1, push(sent)))
    assert client.opened.done() and client.welcomed.done()
    assert stats.received == 1
    assert 0.25 <= stats.latencies_s[0] < 5
    assert client.close_code is None and transport.written == []


async def test_handshake_split_and_rejected() -> None:
    stats = Stats()
    client, _ = make_client(stats)
    answer = handshake(client) + WELCOME
    for i in range(len(answer)):
        client.data_received(answer[i:i + 1])
    assert client.opened.done() and client.welcomed.done()

    client, transport = make_client(stats)
    client.data_received(handshake(client, accept=b"bm90IHRoZSByaWdodCBrZXk="))
    with pytest.raises(HandshakeError):
        client.opened.result()
    assert transport.aborted

    client, transport = make_client(stats)
    client.data_received(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(HandshakeError):
        client.opened.result()


async def test_frames_split_across_chunks_at_every_byte() -> None:
    stats = Stats()
    client, _ = make_client(stats)
    client.data_received(handshake(client) + WELCOME)
    sent = time.time()
    stream = b"".join([
        server_frame(1, push(sent)),
        server_frame(1, push(sent, pad=300)),  # 16-bit length
        server_frame(1, b'{"type":"pong","ts":0}'),  # not a push
        server_frame(1, push(sent, pad=70_000)),  # 64-bit length
        server_frame(2, b"\x00\x01"),  # binary: ignored
        server_frame(1, push(sent)),
    ])
    for i in range(0, len(stream), 3):
        client.data_received(stream[i:i + 3])
    assert stats.received == 4 and len(stats.latencies_s) == 4
    assert client._buf == bytearray()


def feed_buffered(client: Client, data: bytes) -> None:
    """What the loop does: read into the protocol's buffer, then ``buffer_updated``."""
    buf = client.get_buffer(-1)
    buf[:len(data)] = data
    client.buffer_updated(len(data))


async def test_shared_receive_buffer_keeps_each_clients_partial_frame() -> None:
    stats = Stats()
    (a, _), (b, _) = make_client(stats), make_client(stats)
    assert a.get_buffer(-1) is b.get_buffer(-1)
    sent = time.time() - 2
    frame = server_frame(1, push(sent, pad=200))
    feed_buffered(a, handshake(a) + WELCOME + frame[:100])
    feed_buffered(b, handshake(b) + WELCOME + frame[:7])
    feed_buffered(a, frame[100:] + frame[:1])  # the buffer was overwritten by b in between
    feed_buffered(b, frame[7:])
    feed_buffered(a, frame[1:])
    assert stats.received == 3 and all(2 <= lat < 5 for lat in stats.latencies_s)


async def test_16_bit_length_in_one_chunk_with_a_partial_tail() -> None:
    stats = Stats()
    client, _ = make_client(stats)
    client.data_received(handshake(client) + WELCOME)
    frame = server_frame(1, push(time.time(), pad=1000))
    assert frame[1] == 126
    client.data_received(frame + frame[:5])
    assert stats.received == 1
    client.data_received(frame[5:])
    assert stats.received == 2


async def test_continuation_frames_are_one_message_and_pings_interleave() -> None:
    stats = Stats()
    client, transport = make_client(stats)
    client.data_received(handshake(client) + WELCOME)
    transport.written.clear()
    message = push(time.time() - 1)
    client.data_received(server_frame(1, message[:10], fin=False)
                         + server_frame(0, message[10:20], fin=False)
                         + server_frame(9, b"beat"))  # control frames may come in between
    assert stats.received == 0
    client.data_received(server_frame(0, message[20:], fin=True))
    assert stats.received == 1 and 1 <= stats.latencies_s[0] < 5
    assert client_frames(b"".join(transport.written)) == [(10, b"beat")]


async def test_ping_gets_a_masked_pong_with_the_same_payload() -> None:
    stats = Stats()
    client, transport = make_client(stats)
    client.data_received(handshake(client) + WELCOME)
    transport.written.clear()
    payload = bytes(range(125))
    client.data_received(server_frame(9, payload) + server_frame(9, b""))
    raw = b"".join(transport.written)
    assert raw[0] == 0x8A and raw[1] == 0x80 | 125  # final pong, mask bit set
    assert client_frames(raw) == [(10, payload), (10, b"")]
    assert not transport.closing


async def test_server_close_is_echoed_and_counted() -> None:
    stats = Stats()
    client, transport = make_client(stats)
    client.data_received(handshake(client) + WELCOME)
    client.start()
    transport.written.clear()
    client.data_received(server_frame(8, (4001).to_bytes(2, "big") + b"bye")
                         + server_frame(1, push(time.time())))  # after close: ignored
    assert client.close_code == 4001
    assert client_frames(b"".join(transport.written)) == [(8, (4001).to_bytes(2, "big"))]
    assert transport.closing and stats.received == 0
    assert stats.closes == {}  # counted when the connection is gone
    client.connection_lost(None)
    assert stats.closes == {4001: 1} and client.close_code == 4001
    await client.close()  # already gone: returns at once
    assert stats.closes == {4001: 1}


async def test_close_frame_without_code_and_dropped_connection() -> None:
    stats = Stats()
    client, transport = make_client(stats)
    client.data_received(handshake(client) + WELCOME)
    client.start()
    transport.written.clear()
    client.data_received(server_frame(8, b""))
    assert client.close_code == 1005
    assert client_frames(b"".join(transport.written)) == [(8, b"")]
    client.connection_lost(None)

    client, _ = make_client(stats)
    client.data_received(handshake(client) + WELCOME)
    client.start()
    client.connection_lost(ConnectionResetError())
    assert client.close_code == 1006
    assert stats.closes == {1005: 1, 1006: 1}


async def test_lost_before_welcome_fails_the_futures_and_is_not_counted() -> None:
    stats = Stats()
    client, _ = make_client(stats)
    client.data_received(handshake(client))
    client.connection_lost(None)
    assert client.opened.result() is None
    with pytest.raises(ConnectionError):
        client.welcomed.result()
    assert stats.closes == {}


async def test_heartbeat_sends_masked_pings_until_closed() -> None:
    stats = Stats()
    client, transport = make_client(stats, ping_every_s=0.02)
    client.data_received(handshake(client) + WELCOME)
    transport.written.clear()
    client.start()
    while len(transport.written) < 3:
        transport.wrote.clear()
        await asyncio.wait_for(transport.wrote.wait(), 5)
    assert client_frames(b"".join(transport.written))[:3] == [(1, b'{"type":"ping"}')] * 3
    closing = asyncio.create_task(client.close())
    await asyncio.sleep(0)
    assert client_frames(transport.written[-1]) == [(8, (1000).to_bytes(2, "big"))]
    count = len(transport.written)
    client.data_received(server_frame(8, (1000).to_bytes(2, "big")))
    client.connection_lost(None)
    await asyncio.wait_for(closing, 5)
    assert len(transport.written) == count  # no echo of the answer, no more pings
    assert client.close_code == 1000 and stats.closes == {1000: 1}


def test_sent_time_of_compact_json_needs_no_json_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loads(raw: bytes) -> None:
        raise AssertionError("json.loads on the fast path")

    monkeypatch.setattr("bench.loadgen.json.loads", no_loads)
    assert sent_time(b'{"type":"push","id":"1","topic":"a","data":{"t":1732650000.5},'
                     b'"ts":1}') == 1732650000.5
    assert sent_time(b'{"type":"push","data":{"t":17,"x":{"y":[1,2]}},"ts":1}') == 17.0


def test_sent_time() -> None:
    assert sent_time(b'{"type":"push","id":"1","topic":null,"data":{"t":1732650000.125},'
                     b'"ts":1}') == 1732650000.125
    assert sent_time(b'{"type":"push","data":{"t":17,"x":[1,2]},"ts":1}') == 17.0
    assert sent_time(b'{"type": "push", "data": {"t": 2.5}}') == 2.5  # json.loads fallback
    assert sent_time(b'{"type":"push","data":{"t":null}}') is None
    assert sent_time(b'{"type":"push","data":{"t":"3"}}') is None
    assert sent_time(b'{"type":"push","data":{"u":1}}') is None
    assert sent_time(b'{"type":"push","data":[1]}') is None


@pytest.fixture
def baseline_port(tmp_path: Path) -> Iterator[int]:
    with baseline(tmp_path) as (port, _pid):
        yield port


@pytest.mark.e2e
async def test_fifty_clients_against_the_baseline_server(baseline_port: int) -> None:
    await fifty_clients(baseline_port)


@pytest.mark.e2e
def test_fifty_clients_under_uvloop(baseline_port: int) -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert "uvloop" in type(runner.get_loop()).__module__
        runner.run(fifty_clients(baseline_port))


async def fifty_clients(baseline_port: int) -> None:
    stats = Stats()
    urls = [f"ws://127.0.0.1:{baseline_port}/ws/?token={token(f'u{i}')}" for i in range(50)]
    clients, connect = await connect_many(urls, stats, concurrency=20, ping_every_s=0.05,
                                          timeout_s=60)
    assert connect["connected"] == 50 and connect["failed"] == 0
    assert all(c.close_code is None for c in clients)
    async with websockets.connect(f"ws://127.0.0.1:{baseline_port}/control",
                                  compression=None) as control:
        await control.send(json.dumps({"data": {"t": time.time()}}))
        await wait_received(stats, 50, timeout_s=10)
        await asyncio.sleep(0.2)  # heartbeats and their pongs go on meanwhile
    assert stats.received == 50
    assert len(stats.latencies_s) == 50 and all(0 <= lat < 10 for lat in stats.latencies_s)
    assert all(c.close_code is None for c in clients)
    await asyncio.wait_for(asyncio.gather(*(c.close() for c in clients)), 10)
    assert [c.close_code for c in clients] == [1000] * 50
    assert stats.closes == {1000: 50}

    bad, failed = await connect_many(
        [f"ws://127.0.0.1:{baseline_port}/ws/?token=not-a-jwt"], stats, timeout_s=60)
    assert bad == [] and failed["failed"] == 1
