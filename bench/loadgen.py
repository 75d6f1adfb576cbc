"""The load client: many WebSocket clients in one asyncio process, bounded in count and time.

Clients connect from many 127.x.y.z source addresses (loopback is a /8), so tens of
thousands of connections do not run out of ephemeral ports. Every push carries the time
it was sent (``data.t``, epoch seconds) and each client records ``now - t`` when the frame
arrives: the end-to-end latency, API (or control message) to client, on one machine clock.

The clients are a bare RFC 6455 client on ``asyncio.BufferedProtocol``, not the ``websockets``
library: the load client shares two cores with the server under test, and at tens of
thousands of frames a second the library's per-frame cost (~15-20 us) saturated a core and
inflated the latency it measured. No extensions (no compression), no TLS; the server's
frames are parsed straight from one receive buffer shared by all clients, and a push's send
time is read from its compact JSON without ``json.loads`` when it has the expected shape.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit


def source_addresses(count: int = 250) -> Iterator[str]:
    """127.0.1.1, 127.0.1.2, ...: distinct source addresses for outgoing connections."""
    return itertools.cycle(f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(count))


@dataclass
class Stats:
    received: int = 0
    latencies_s: list[float] = field(default_factory=list)
    closes: dict[int, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2)

        return {
            "received": self.received,
            "latency_ms": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99),
                           "max": round(lat[-1] * 1000, 2) if lat else None},
            "closes": {str(k): v for k, v in self.closes.items()},
        }


#: Text frames that count as pushes: the gateway's and the baseline's compact JSON (and the
#: spaced form ``json.dumps`` writes by default).
PUSH_PREFIXES = (b'{"type":"push"', b'{"type": "push"')
_SENT_KEY = b'"data":{"t":'
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD = 65536
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def sent_time(payload: bytes) -> float | None:
    """``data.t`` of a push frame: sliced out of compact JSON, else via ``json.loads``."""
    i = payload.find(_SENT_KEY)
    if i >= 0:
        j = i + len(_SENT_KEY)
        end = payload.find(b"}", j)
        comma = payload.find(b",", j)
        if 0 <= comma < end:
            end = comma
        if end > j:
            with contextlib.suppress(ValueError):
                return float(payload[j:end])
    try:
        data = json.loads(payload).get("data")
    except (ValueError, AttributeError):
        return None
    t = data.get("t") if isinstance(data, dict) else None
    return float(t) if isinstance(t, int | float) and not isinstance(t, bool) else None


def mask_payload(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``mask`` (masking and unmasking alike)."""
    n = len(payload)
    if not n:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final, masked frame from client to server."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    return head + mask + mask_payload(payload, mask)


PING_FRAME_PAYLOAD = b'{"type":"ping"}'


class HandshakeError(ConnectionError):
    pass


#: One receive buffer for every client: the loop fills it (``get_buffer``, ``recv_into``) and
#: hands it to one protocol's ``buffer_updated`` before the next read, and a client keeps only
#: copies of it. The default ``data_received`` path has asyncio's selector loop allocate a
#: 256 KiB ``bytes`` per read: more than half the load client's CPU with small frames.
_RECV = bytearray(256 * 1024)
_RECV_VIEW = memoryview(_RECV)


class Client(asyncio.BufferedProtocol):
    """One WebSocket client connection: the protocol of its transport.

    ``opened`` resolves at the 101 answer, ``welcomed`` at the first text frame (the
    gateway's welcome); both fail if the connection is lost first. ``close_code`` stays
    None while the connection is open: the server's close code once it closed, 1005 for a
    close frame without one, 1006 when the TCP connection dropped without a close frame.
    """

    def __init__(self, url: str, stats: Stats, *, ping_every_s: float | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "ws":
            raise ValueError(f"only ws:// URLs: {url}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.netloc = parts.netloc
        self.stats = stats
        self.ping_every_s = ping_every_s
        self.key = base64.b64encode(os.urandom(16))
        self.close_code: int | None = None
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.welcomed: asyncio.Future[None] = self.loop.create_future()
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self._head: bytearray | None = bytearray()  # None once the handshake is done
        self._buf = bytearray()
        self._frag_op: int | None = None
        self._frag: list[bytes] = []
        self._welcome_pending = True
        self._close_sent = False
        self._done = False  # close frame received, or transport lost: parse no more
        self._tracked = False  # counted in ``stats.closes`` when it closes
        self._ping_handle: asyncio.TimerHandle | None = None

    # -- asyncio.BufferedProtocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A uvloop transport is no ``asyncio.Transport`` subclass: no isinstance check.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.write(
            b"GET " + self.target.encode() + b" HTTP/1.1\r\nHost: " + self.netloc.encode()
            + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
            + self.key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECV_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self._feed(_RECV, nbytes)

    def data_received(self, data: bytes) -> None:
        """Bytes from the server (the loop uses ``buffer_updated``; tests call this)."""
        self._feed(data, len(data))

    def _feed(self, data: bytes | bytearray, n: int) -> None:
        """Take ``data[:n]``; nothing of ``data`` is kept (it may be the shared buffer)."""
        if self._done:
            return
        if self._head is not None:
            head = self._head
            head += memoryview(data)[:n]
            end = head.find(b"\r\n\r\n")
            if end < 0:
                if len(head) > _MAX_HEAD:
                    self._fail(HandshakeError("handshake answer too long"))
                return
            try:
                self._check_handshake(bytes(head[:end]))
            except HandshakeError as exc:
                self._fail(exc)
                return
            self._head = None
            data = bytes(head[end + 4:])
            n = len(data)
            self.opened.set_result(None)
            if not n:
                return
        buf = self._buf
        if buf:
            buf += memoryview(data)[:n]
            del buf[:self._parse(buf, len(buf), time.time())]
        else:
            pos = self._parse(data, n, time.time())
            if pos < n:
                buf += memoryview(data)[pos:n]

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        if self.close_code is None:
            self.close_code = 1006
        self._cancel_ping()
        lost = ConnectionError(f"connection lost ({exc or 'closed'})")
        for fut in (self.opened, self.welcomed):
            if not fut.done():
                fut.set_exception(lost)
                fut.exception()  # retrieved: no "never retrieved" warning if nobody waits
        if not self.lost.done():
            self.lost.set_result(None)
        if self._tracked:
            self._count_close()

    # -- frames ----------------------------------------------------------------------------

    def _parse(self, b: bytes | bytearray, n: int, now: float) -> int:
        """Handle the complete frames at the start of ``b[:n]``; how many bytes they took."""
        pos = 0
        while n - pos >= 2 and not self._done:
            b0, b1 = b[pos], b[pos + 1]
            length = b1 & 0x7F
            p = pos + 2
            if length == 126:
                if n - p < 2:
                    break
                length = (b[p] << 8) | b[p + 1]
                p += 2
            elif length == 127:
                if n - p < 8:
                    break
                length = int.from_bytes(b[p:p + 8], "big")
                p += 8
            mask = None
            if b1 & 0x80:  # servers must not mask; unmask anyway
                if n - p < 4:
                    break
                mask = bytes(b[p:p + 4])
                p += 4
            end = p + length
            if end > n:
                break
            payload = b[p:end]
            if mask is not None:
                payload = mask_payload(bytes(payload), mask)
            pos = end
            opcode = b0 & 0x0F
            if opcode == OP_TEXT and b0 & 0x80:
                self._on_text(payload, now)
            elif opcode <= OP_BINARY:
                if opcode == OP_CONT:
                    if self._frag_op is None:
                        continue  # a continuation of nothing: ignored
                    self._frag.append(bytes(payload))
                else:
                    self._frag_op, self._frag = opcode, [bytes(payload)]
                if b0 & 0x80:
                    opcode, message = self._frag_op, b"".join(self._frag)
                    self._frag_op, self._frag = None, []
                    if opcode == OP_TEXT:
                        self._on_text(message, now)
            elif opcode == OP_CLOSE:
                self._on_close(bytes(payload))
            elif opcode == OP_PING:
                self._write(client_frame(OP_PING + 1, bytes(payload)))
            # OP_PONG, binary messages and unknown opcodes: ignored
        return pos

    def _on_text(self, payload: bytes | bytearray, now: float) -> None:
        if self._welcome_pending:
            self._welcome_pending = False
            self.welcomed.set_result(None)
        if payload.startswith(PUSH_PREFIXES):
            stats = self.stats
            stats.received += 1
            sent = sent_time(payload)
            if sent is not None:
                stats.latencies_s.append(now - sent)

    def _on_close(self, payload: bytes) -> None:
        self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        self._done = True
        if not self._close_sent:  # the server's close: echo its code, then hang up
            self._write(client_frame(OP_CLOSE, payload[:2]))
            self._close_sent = True
        if self.transport is not None:
            self.transport.close()

    def _write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def _fail(self, exc: Exception) -> None:
        self._done = True
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def _check_handshake(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        if len(status) < 2 or status[1] != b"101":
            raise HandshakeError(f"handshake answer: {lines[0]!r}")
        accept = base64.b64encode(hashlib.sha1(self.key + _WS_GUID).digest())
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-accept":
                if value.strip() != accept:
                    raise HandshakeError("wrong Sec-WebSocket-Accept")
                return
        raise HandshakeError("no Sec-WebSocket-Accept")

    # -- lifetime --------------------------------------------------------------------------

    def start(self) -> None:
        """Adopted by ``connect_many``: count its close in the stats, start its heartbeat."""
        self._tracked = True
        if self.lost.done():
            self._count_close()
        elif self.ping_every_s:
            self._ping_handle = self.loop.call_later(self.ping_every_s, self._ping)

    def _count_close(self) -> None:
        closes = self.stats.closes
        code = self.close_code or 1006
        closes[code] = closes.get(code, 0) + 1
        self._tracked = False  # once

    def _ping(self) -> None:
        if self._done or self._close_sent:
            return
        self._write(client_frame(OP_TEXT, PING_FRAME_PAYLOAD))
        assert self.ping_every_s
        self._ping_handle = self.loop.call_later(self.ping_every_s, self._ping)

    def _cancel_ping(self) -> None:
        if self._ping_handle is not None:
            self._ping_handle.cancel()
            self._ping_handle = None

    async def close(self) -> None:
        """Send close 1000, wait up to 2 s for the server's close, then hang up."""
        self._cancel_ping()
        transport = self.transport
        if transport is None or self.lost.done():
            return
        if not self._close_sent and not self._done:
            self._write(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
            self._close_sent = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.lost), 2)
        if not self.lost.done():
            transport.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.lost), 1)


async def open_client(url: str, stats: Stats, *, source: str | None = None,
                      ping_every_s: float | None = None, wait_welcome: bool = True,
                      timeout_s: float = 30) -> Client:
    """Connect one client (handshake within ``timeout_s``, then its welcome within
    ``timeout_s``) and start it; on failure its connection is closed and the error raised."""
    loop = asyncio.get_running_loop()
    client = Client(url, stats, ping_every_s=ping_every_s)
    try:
        await asyncio.wait_for(loop.create_connection(
            lambda: client, client.host, client.port,
            local_addr=(source, 0) if source else None), timeout_s)
        await asyncio.wait_for(asyncio.shield(client.opened), timeout_s)
        if wait_welcome:
            await asyncio.wait_for(asyncio.shield(client.welcomed), timeout_s)
    except BaseException:
        if client.transport is not None:
            client.transport.abort()
        raise
    client.start()
    return client


async def connect_many(
    urls: list[str], stats: Stats, *, concurrency: int = 200, ping_every_s: float | None = None,
    wait_welcome: bool = True, timeout_s: float = 120,
) -> tuple[list[Client], dict[str, Any]]:
    """Open one client per URL; returns the clients and connect figures (rate, failures).

    With ``ping_every_s`` each client sends ``{"type":"ping"}`` that often, from one timer
    per client on the loop (no task per client), each on its own phase of the interval.
    """
    clients: list[Client] = []
    failures = 0
    sources = source_addresses()
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async def one(url: str) -> None:
        nonlocal failures
        async with gate:
            try:
                clients.append(await open_client(
                    url, stats, source=next(sources), ping_every_s=ping_every_s,
                    wait_welcome=wait_welcome))
            except Exception:
                failures += 1

    await asyncio.wait_for(asyncio.gather(*(one(u) for u in urls)), timeout_s)
    elapsed = time.perf_counter() - started
    return clients, {
        "connected": len(clients), "failed": failures,
        "connect_per_s": round(len(clients) / elapsed, 1) if elapsed else None,
    }


async def wait_received(stats: Stats, expected: int, *, timeout_s: float) -> float:
    """Wait until ``expected`` pushes arrived (or the timeout); seconds waited."""
    started = time.perf_counter()
    deadline = started + timeout_s
    while stats.received < expected and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # polling a counter the readers bump: cheaper than an Event
    return time.perf_counter() - started


class HttpPool:
    """Keep-alive HTTP/1.1 connections for the pusher, over plain asyncio streams.

    A request costs the load client a few microseconds here where httpx costs about a
    millisecond, which capped what the bench could offer (a few hundred requests a second
    on a 2-core machine) below what the server takes. JSON bodies only; answers are read by
    ``Content-Length`` or chunked.
    """

    def __init__(self, host: str, port: int, *, size: int,
                 headers: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self.size = size
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {
            "Host": f"{host}:{port}", "Content-Type": "application/json", **(headers or {}),
        }.items()).encode("latin-1")
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue())
        self._open = 0
        self._all: set[asyncio.StreamWriter] = set()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` (JSON); the status and body of the answer."""
        reader, writer = await self._take()
        try:
            writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\n" + self.head
                         + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length, chunked = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                parts = []
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    parts.append((await reader.readexactly(size + 2))[:-2])
                await reader.readuntil(b"\r\n")
                content = b"".join(parts)
            else:
                content = await reader.readexactly(length)
        except BaseException:
            self._drop(writer)
            raise
        self._idle.put_nowait((reader, writer))
        return status, content

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._idle.empty() and self._open < self.size:
            self._open += 1
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except BaseException:
                self._open -= 1
                raise
            self._all.add(writer)
            return reader, writer
        return await self._idle.get()

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        self._open -= 1
        self._all.discard(writer)
        writer.close()

    async def aclose(self) -> None:
        for writer in list(self._all):
            writer.close()
        self._all.clear()
