"""The ASGI servers ``rungateway`` can run the gateway under.

Daphne is the default (the customer's choice). The choice lives here, behind
``rungateway --server``, so a faster server can be added without touching the app.

Daphne settings chosen against its traps:
- ``websocket_timeout=-1``: otherwise Daphne closes every WebSocket after 24 h.
- ``websocket_max_message_size`` limits outgoing frames too, so it is sized from the push
  payload limit; the contract's inbound limit (4013) is enforced by the consumer.
- A listen backlog of 2048 instead of the usual 50, for reconnect storms.
- Our own SIGTERM/SIGINT handling drains the node (4012 to every client) before the
  reactor stops; Daphne's own would drop connections without a close frame.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from gatewaysite.conf import gateway_settings
from gatewaysite.node import Node

logger = logging.getLogger("gateway.server")
LISTEN_BACKLOG = 2048
#: After draining, how long close frames get to leave before the process exits.
DRAIN_FLUSH_S = 0.5


class ServerError(RuntimeError):
    """The server could not start (the port is taken, the address is wrong)."""


def run_daphne(*, host: str, port: int, node: Node,
               on_ready: Callable[[], None] | None = None) -> None:
    from daphne.server import Server  # installs Twisted's asyncio reactor: import first
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor  # the installed reactor's interfaces are not in its stubs

    from gatewaysite.asgi import application

    class GatewayDaphne(Server):
        listen_failure = ""

        def listen_error(self, failure: Any) -> None:
            # Daphne logs and keeps the process alive; a node that cannot listen must exit.
            self.listen_failure = failure.getErrorMessage()
            reactor.callLater(0, reactor.stop)

        def listen_success(self, port: Any) -> None:
            super().listen_success(port)
            if on_ready is not None:
                on_ready()

    max_message = max(1024 * 1024, 2 * gateway_settings.max_payload_bytes + 4096)
    interface = host.strip("[]").replace(":", r"\:")
    server = GatewayDaphne(
        application=application,
        endpoints=[f"tcp:port={port}:interface={interface}:backlog={LISTEN_BACKLOG}"],
        signal_handlers=False,
        websocket_timeout=-1,
        websocket_max_message_size=max_message,
        websocket_max_frame_size=max_message,
        application_close_timeout=5,
        verbosity=0,
    )

    async def shutdown() -> None:
        logger.info("draining node %s", node.node_id)
        try:
            await node.stop()
            await asyncio.sleep(DRAIN_FLUSH_S)
        finally:
            reactor.stop()

    background: set[asyncio.Task[None]] = set()

    def in_background(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    def started() -> None:
        loop = asyncio.get_event_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: in_background(shutdown()))
        in_background(node.ensure_started())

    reactor.callWhenRunning(started)
    server.run()
    if server.listen_failure:
        raise ServerError(server.listen_failure)


SERVERS = {"daphne": run_daphne}
