"""Bounding what waits to be written to one slow client (GATEWAY_MAX_SEND_BUFFER_BYTES).

ASGI gives the application no view of the socket, and the two servers fail a slow client
in opposite ways: under Daphne ``send`` never blocks and every frame lands in Twisted's
transport buffer, which grows without limit for a client that reads nothing; under uvicorn
``send`` *waits* while the transport is over its high-water mark, so one slow client would
stall the node's delivery loop, which writes to connections one after another, and every
other client would wait with it. The honest bound lives below ASGI, so this module reads
it there. The consumer asks its buffer about every frame (``offer``): ``WRITE`` (send it
now; the send returns at once), ``QUEUED`` (the buffer keeps it) or ``TOO_SLOW`` (close
the client with 4030); and closes through the buffer, so a close frame queues behind what
waits and never blocks the caller either.

- Daphne: the ASGI ``send`` callable is ``functools.partial(Server.handle_reply, protocol)``;
  the protocol's ``transport`` is Twisted's TCP transport. Twisted's flow control (the
  producer API) sets its documented ``producerPaused`` flag once more than
  ``transport.bufferSize`` (64 KiB) waits in its buffer, and clears it when the buffer has
  drained. Daphne's HTTP channel stays registered as the transport's streaming producer
  after the WebSocket upgrade, so the flag is live; where no producer is registered, a
  do-nothing one is. While the flag is up every frame the gateway writes is counted; past
  the limit (less the 64 KiB Twisted already holds) the client is closed with 4030, and
  its connection is aborted if even the close frame cannot get out within
  ``abort_after_s``. ``offer`` never answers ``QUEUED``: Twisted's buffer is the queue.
- uvicorn (websockets-sansio, and wsproto alike): the ASGI ``send`` callable is the bound
  method ``protocol.send``; the protocol has ``transport`` (an asyncio transport, with the
  public ``get_write_buffer_size()``) and ``writable`` (an ``asyncio.Event`` its
  ``pause_writing``/``resume_writing`` clear and set, which ``send`` awaits). While the
  connection is writable and nothing is queued, frames are written at once, so the common
  path is one ``send`` that does not wait. Otherwise frames go to a small per-connection
  queue that a writer task (started on demand) drains as the transport becomes writable
  again. What waits is the queue plus the transport's buffer; past the limit the client
  is closed with 4030: the queue is dropped, the close frame waits for the transport, and
  the connection is aborted if it cannot get out within ``abort_after_s``.
- Any other server (the test communicator): ``UnboundedSendBuffer``, which admits all.

Frames are counted by characters, a lower bound of their UTF-8 size, so the check costs
nothing on the hot path.

A frame that goes to many connections (a push) is encoded once (``frames.wire``) and, where
the buffer answers ``WRITE``, written as those bytes straight to the connection's transport
(``write_wire``) instead of going through the server's ``send``, which re-encodes it for
each recipient (docs/performance.md has the CPU it saves per delivery). That is safe
only while the server's protocol would write the frame unchanged itself: the connection is
open, not closing, and no extension (per-message deflate) rewrites frames; ``write_wire``
checks that on every call and otherwise declines, and the frame goes through ``send``.
Both paths write to the same transport from the one event loop, so order is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from websockets.protocol import Protocol as WebSocketsProtocol
from websockets.protocol import State as WebSocketsState

logger = logging.getLogger("gateway.flow")

Send = Callable[[dict[str, Any]], Awaitable[None]]

#: What ``SendBuffer.offer`` answers.
WRITE: Final = 0
"""Send the frame now: the connection takes it without waiting."""
QUEUED: Final = 1
"""The buffer keeps the frame and writes it when the connection drains."""
TOO_SLOW: Final = 2
"""The client is over its bound: close it with 4030."""


class SendBuffer(Protocol):
    def offer(self, frame: str) -> int:
        """``WRITE``, ``QUEUED`` or ``TOO_SLOW`` for one frame about to be written."""

    async def close(self, message: dict[str, Any]) -> None:
        """Send ``websocket.close`` behind what waits, without waiting for a slow client;
        drop the connection if the close cannot get out in time."""

    def write_wire(self, wire: bytes) -> bool:
        """Write one encoded frame (``frames.wire``) to the socket now, after ``offer``
        answered ``WRITE``; False if the server's protocol must write it (module doc)."""


class UnboundedSendBuffer:
    def __init__(self, send: Send) -> None:
        self.send = send

    def offer(self, frame: str) -> int:
        return WRITE

    async def close(self, message: dict[str, Any]) -> None:
        await self.send(message)

    def write_wire(self, wire: bytes) -> bool:
        return False


class _NoopProducer:
    """Registered only so that Twisted maintains ``producerPaused`` for a bare transport."""

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted's interface)
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


class TwistedSendBuffer:
    """Reads Twisted's flow-control flag on the connection's transport (see module doc)."""

    abort_after_s = 5.0

    def __init__(self, transport: Any, send: Send, *, max_bytes: int,
                 protocol: Any = None) -> None:
        self.transport = transport
        self.send = send
        # Daphne's protocol is autobahn's WebSocketServerProtocol: its state tells whether
        # it would write a frame as it is (``write_wire``).
        self.protocol = protocol if hasattr(protocol, "send_state") else None
        # Twisted's TCP transport writes nothing at once: every write is buffered, the
        # socket registered with the reactor for writing, written when the reactor gets
        # round to it, then unregistered (two epoll_ctl calls and a reactor pass per
        # frame, a large share of Daphne's CPU per delivery: docs/performance.md). While
        # its buffer is empty, ``write_wire`` sends on the socket directly, as asyncio's
        # transports do, and leaves only what the kernel did not take to Twisted.
        self.sock = transport.socket if all(
            hasattr(transport, name)
            for name in ("socket", "dataBuffer", "offset", "_tempDataLen", "TLS",
                         "_writeDisconnected")
        ) else None
        self.limit = max(0, max_bytes - int(getattr(transport, "bufferSize", 65536)))
        self.waiting_bytes = 0
        if getattr(transport, "producer", None) is None:
            transport.registerProducer(_NoopProducer(), True)

    def offer(self, frame: str) -> int:
        if not self.transport.producerPaused:
            self.waiting_bytes = 0
            return WRITE
        self.waiting_bytes += len(frame)
        return WRITE if self.waiting_bytes <= self.limit else TOO_SLOW

    async def close(self, message: dict[str, Any]) -> None:
        await self.send(message)
        self.abort_if_stuck()

    def write_wire(self, wire: bytes) -> bool:
        protocol = self.protocol
        if (
            protocol is None
            or protocol.state != protocol.STATE_OPEN
            or protocol.send_state != protocol.SEND_STATE_GROUND
            or protocol._perMessageCompress is not None
        ):
            return False
        transport = self.transport
        if (
            self.sock is not None
            and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
            and not transport.TLS
        ):
            try:
                sent = self.sock.send(wire)
            except OSError:  # EAGAIN; or a broken connection, which Twisted reports itself
                sent = 0
            if sent == len(wire):
                return True
            wire = wire[sent:]
        transport.write(wire)
        return True

    def abort_if_stuck(self) -> None:
        if self.transport.producerPaused:
            asyncio.get_running_loop().call_later(self.abort_after_s, self._abort)

    def _abort(self) -> None:
        if self.transport.producerPaused and hasattr(self.transport, "abortConnection"):
            logger.info("dropping a client that did not read its close frame")
            self.transport.abortConnection()


class AsyncioSendBuffer:
    """uvicorn: never awaits a ``send`` that would wait (see module doc)."""

    abort_after_s = 5.0

    def __init__(self, send: Send, *, transport: asyncio.WriteTransport,
                 writable: asyncio.Event, max_bytes: int, protocol: Any = None) -> None:
        self.send = send
        # uvicorn's websockets-sansio protocol keeps the connection's state in ``conn``
        # (websockets' sans-I/O ServerProtocol); wsproto's has no such thing.
        self.protocol = protocol if isinstance(getattr(protocol, "conn", None),
                                               WebSocketsProtocol) else None
        self.transport = transport
        self.writable = writable
        self.max_bytes = max_bytes
        # What waits for the transport; created when the first frame has to wait (an empty
        # deque per idle connection costs more than half a kilobyte).
        self.queue: deque[tuple[dict[str, Any], int]] | None = None
        self.queued_bytes = 0
        self.writer: asyncio.Task[None] | None = None
        self.too_slow = False

    def offer(self, frame: str) -> int:
        if not self.queue and self.writable.is_set():
            return WRITE
        size = len(frame)
        waiting = self.queued_bytes + size + self.transport.get_write_buffer_size()
        if waiting > self.max_bytes:
            self.too_slow = True
            return TOO_SLOW
        self._enqueue({"type": "websocket.send", "text": frame}, size)
        return QUEUED

    async def close(self, message: dict[str, Any]) -> None:
        if self.too_slow:
            # The client is closed for what waits: none of it is sent any more.
            self._drop_queue()
        if not self.queue and self.writable.is_set():
            with contextlib.suppress(OSError):  # uvicorn's ClientDisconnected: already gone
                await self.send(message)
        else:
            self._enqueue(message, 0)
        if self.queue or not self.writable.is_set():
            asyncio.get_running_loop().call_later(self.abort_after_s, self._abort)

    def write_wire(self, wire: bytes) -> bool:
        protocol = self.protocol
        if (
            protocol is None
            or protocol.disconnected
            or protocol.close_sent
            or not protocol.handshake_complete
            or protocol.initial_response is not None
            or protocol.conn.state is not WebSocketsState.OPEN
            or protocol.conn.extensions
        ):
            return False
        self.transport.write(wire)
        return True

    def _enqueue(self, message: dict[str, Any], size: int) -> None:
        if self.queue is None:
            self.queue = deque()
        self.queue.append((message, size))
        self.queued_bytes += size
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        queue = self.queue
        assert queue is not None  # started by ``_enqueue``
        try:
            while queue:
                await self.writable.wait()
                if not queue:
                    break
                # Taken and written in one step (``send`` does not wait while writable), so
                # a frame ``offer`` lets through directly can never overtake a queued one.
                message, size = queue.popleft()
                self.queued_bytes -= size
                await self.send(message)
        except OSError:
            # uvicorn's ClientDisconnected: the client went away while frames waited.
            self._drop_queue()
        except Exception:
            logger.exception("writing queued frames failed")
            self._drop_queue()
        finally:
            self.writer = None

    def _abort(self) -> None:
        if self.queue or self.transport.get_write_buffer_size():
            logger.info("dropping a client that did not read its close frame")
            self._drop_queue()
            self.transport.abort()

    def _drop_queue(self) -> None:
        # Emptied in place: a running writer holds the same deque and stops with it.
        if self.queue is not None:
            self.queue.clear()
        self.queued_bytes = 0


def send_buffer_for(send: Any, *, max_bytes: int) -> SendBuffer:
    """The bound for the connection behind this ASGI ``send`` callable."""
    if isinstance(send, functools.partial) and send.args:
        transport = getattr(send.args[0], "transport", None)
        if transport is not None and hasattr(transport, "producerPaused"):
            return TwistedSendBuffer(transport, send, max_bytes=max_bytes,
                                     protocol=send.args[0])
    protocol = getattr(send, "__self__", None)
    if protocol is not None:
        transport = getattr(protocol, "transport", None)
        writable = getattr(protocol, "writable", None)
        if isinstance(writable, asyncio.Event) and transport is not None and hasattr(
            transport, "get_write_buffer_size"
        ):
            return AsyncioSendBuffer(send, transport=transport, writable=writable,
                                     max_bytes=max_bytes, protocol=protocol)
    return UnboundedSendBuffer(send)
