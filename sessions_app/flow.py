"""Bounding what waits to be written to one slow client (GATEWAY_MAX_SEND_BUFFER_BYTES).

ASGI gives the application no view of the socket: ``send`` never blocks, and under Daphne
every frame lands in Twisted's transport buffer, which grows without limit for a client
that reads nothing. The honest bound lives below ASGI, so this module reads it there:

- Daphne: the ASGI ``send`` callable is ``functools.partial(Server.handle_reply, protocol)``;
  the protocol's ``transport`` is Twisted's TCP transport. Twisted's flow control (the
  producer API) sets its documented ``producerPaused`` flag once more than
  ``transport.bufferSize`` (64 KiB) waits in its buffer, and clears it when the buffer has
  drained. Daphne's HTTP channel stays registered as the transport's streaming producer
  after the WebSocket upgrade, so the flag is live; where no producer is registered, a
  do-nothing one is. While the flag is up every frame the gateway writes is counted; past
  the limit (less the 64 KiB Twisted already holds) the client is closed with 4030, and
  its connection is aborted if even the close frame cannot get out within
  ``abort_after_s``.
- Any other server (the test communicator): ``UnboundedSendBuffer``, which admits all.

Frames are counted by characters, a lower bound of their UTF-8 size, so the check costs
nothing on the hot path.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Protocol

logger = logging.getLogger("gateway.flow")


class SendBuffer(Protocol):
    def admit(self, size: int) -> bool:
        """Account for one frame about to be written; False if the client is over its bound."""

    def abort_if_stuck(self) -> None:
        """After a close frame: drop the connection if it cannot drain in time."""


class UnboundedSendBuffer:
    def admit(self, size: int) -> bool:
        return True

    def abort_if_stuck(self) -> None:
        return None


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

    def __init__(self, transport: Any, *, max_bytes: int) -> None:
        self.transport = transport
        self.limit = max(0, max_bytes - int(getattr(transport, "bufferSize", 65536)))
        self.waiting_bytes = 0
        if getattr(transport, "producer", None) is None:
            transport.registerProducer(_NoopProducer(), True)

    def admit(self, size: int) -> bool:
        if not self.transport.producerPaused:
            self.waiting_bytes = 0
            return True
        self.waiting_bytes += size
        return self.waiting_bytes <= self.limit

    def abort_if_stuck(self) -> None:
        if self.transport.producerPaused:
            asyncio.get_running_loop().call_later(self.abort_after_s, self._abort)

    def _abort(self) -> None:
        if self.transport.producerPaused and hasattr(self.transport, "abortConnection"):
            logger.info("dropping a client that did not read its close frame")
            self.transport.abortConnection()


def send_buffer_for(send: Any, *, max_bytes: int) -> SendBuffer:
    """The bound for the connection behind this ASGI ``send`` callable."""
    if isinstance(send, functools.partial) and send.args:
        transport = getattr(send.args[0], "transport", None)
        if transport is not None and hasattr(transport, "producerPaused"):
            return TwistedSendBuffer(transport, max_bytes=max_bytes)
    return UnboundedSendBuffer()
