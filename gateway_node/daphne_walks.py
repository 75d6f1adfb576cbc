"""Daphne's connection bookkeeping, done when a connection changes instead of by walking.

Daphne's ``Server`` walks every connection it holds once a second (``application_checker``:
reap application instances that finished, cancel those of connections closed more than
``application_close_timeout`` ago) and every two seconds (``timeout_checker``: each
protocol's ``check_timeouts``), whether anything changed or not. With 5,000 WebSockets
each walk held the event loop for 50-60 ms, and at 1,500 pushes/s the second's 1,500
finished HTTP requests took 15-20 ms more: the slowest pushes of a steady load waited
behind them (docs/performance.md, "Kept pushes").

``ChangedConnectionWalks`` goes before ``Server`` in a subclass's bases, and does the same
work when it becomes due:

- a connection is reaped the moment it is closed and its application instance has
  finished, whichever comes second (an instance that failed is logged, and its open
  connection told, as Daphne does);
- the once-a-second walk visits only connections closed while their instance still runs,
  and cancels an instance past ``application_close_timeout``;
- the timeout walk visits only WebSocket handshakes not yet answered. The gateway runs
  Daphne with ``websocket_timeout=-1`` and no keepalive pings, so an open WebSocket's check
  does nothing, and without an ``http_timeout`` neither does an HTTP request's; a
  handshake the application never answers is still refused after
  ``websocket_connect_timeout``.

Daphne's walk also stopped the server when an instance raised ``KeyboardInterrupt`` (its
own tests' way out); here that is logged like any other failure.

It imports nothing of Daphne's or Twisted's at module level: Twisted's reactor must be
installed (by importing ``daphne.server``) before anything imports it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("gateway.server")
#: Seconds between the walks, as Daphne's.
CLOSING_WALK_EVERY_S = 1
TIMEOUT_WALK_EVERY_S = 2


class ChangedConnectionWalks:
    #: Daphne's: protocol → {"connected", "disconnected", "application_instance"}.
    connections: dict[Any, dict[str, Any]]
    application_close_timeout: float
    clock: Callable[[], float] = staticmethod(time.time)  # Daphne's "disconnected" clock

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Closed while their application instance still runs.
        self.closing: set[Any] = set()
        #: WebSocket protocols still in their opening handshake.
        self.handshakes: set[Any] = set()

    def protocol_connected(self, protocol: Any) -> None:
        super().protocol_connected(protocol)  # type: ignore[misc]
        if hasattr(protocol, "STATE_CONNECTING"):  # autobahn's: a WebSocket
            self.handshakes.add(protocol)

    def protocol_disconnected(self, protocol: Any) -> None:
        # Daphne may report a close twice (an HTTP request's finish, then its connection's
        # loss); the first may already have reaped it.
        if protocol not in self.connections:
            return
        super().protocol_disconnected(protocol)  # type: ignore[misc]
        if not self.reap(protocol):
            self.closing.add(protocol)

    def create_application(self, protocol: Any, scope: Any) -> Any:
        queue = super().create_application(protocol, scope)  # type: ignore[misc]
        instance = self.connections.get(protocol, {}).get("application_instance")
        if instance is not None:
            instance.add_done_callback(lambda _: self.reap(protocol))
        return queue

    def reap(self, protocol: Any) -> bool:
        """Forget a finished application instance, and the connection once it is also
        closed; whether the connection is gone."""
        details = self.connections.get(protocol)
        if details is None:
            return True
        instance = details.get("application_instance")
        if instance is not None and instance.done():
            del details["application_instance"]
            report_failure(protocol, instance, disconnected="disconnected" in details)
            instance = None
        if instance is None and "disconnected" in details:
            del self.connections[protocol]
            self.closing.discard(protocol)
            return True
        return False

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        from twisted.internet import reactor as installed

        reactor: Any = installed  # the installed reactor's interfaces are not in its stubs
        reactor.callLater(delay_s, fn)

    def application_checker(self) -> None:
        now = self.clock()
        for protocol in list(self.closing):
            details = self.connections.get(protocol)
            instance = None if details is None else details.get("application_instance")
            if details is None or instance is None or instance.done():
                self.closing.discard(protocol)
                self.reap(protocol)
            elif now - details["disconnected"] > self.application_close_timeout:
                logger.warning("application instance for %r took too long to shut down "
                               "and was cancelled", protocol)
                instance.cancel()  # its done callback reaps it
        self.call_later(CLOSING_WALK_EVERY_S, self.application_checker)

    def timeout_checker(self) -> None:
        for protocol in list(self.handshakes):
            if protocol in self.connections:
                protocol.check_timeouts()
            if protocol not in self.connections or protocol.state != protocol.STATE_CONNECTING:
                self.handshakes.discard(protocol)
        self.call_later(TIMEOUT_WALK_EVERY_S, self.timeout_checker)


def report_failure(protocol: Any, instance: asyncio.Future[Any], *, disconnected: bool) -> None:
    """Log an application instance's exception and, if its connection is still open, let
    the protocol answer it (a 500, a WebSocket close), as Daphne's walk does."""
    if instance.cancelled():
        return
    exception = instance.exception()
    if exception is None:
        return
    logger.error("Exception inside application: %s", exception, exc_info=exception)
    if not disconnected:
        protocol.handle_exception(exception)
