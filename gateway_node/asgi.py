"""The node's ASGI application: ``/ws/`` to the gateway consumer, everything else to Django.

``build_application()`` wires it: the consumer and the hot path are handed the node (a
callable returning it), never look it up themselves. It serves under ``rungateway`` and
under a bare ``daphne gatewaysite.asgi:application``; in the latter the node starts its
loops on the first request or connection. Under a server with the ASGI lifespan protocol
(uvicorn) the node starts with the server and stops (drains, 4012) when it shuts down.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway_node.node import GatewayNode

NodeProvider = Callable[[], "GatewayNode"]
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

logger = logging.getLogger("gateway.node")


class NodeStarter:
    """Starts this process's node before the first request (Daphne has no lifespan), and
    under a bare ``daphne`` has it stopped with the server (see ``stop_with_twisted``)."""

    def __init__(self, app: Any, *, node: NodeProvider) -> None:
        self.app = app
        self.node = node
        self.stop_hooked = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        node = self.node()
        if not node.running:
            await node.ensure_started()
            if not self.stop_hooked:
                self.stop_hooked = stop_with_twisted(node)
        await self.app(scope, receive, send)


def stop_with_twisted(node: GatewayNode) -> bool:
    """Under Daphne (a Twisted reactor), stop ``node`` before the reactor shuts down.

    A bare ``daphne`` stops its reactor on SIGTERM and never told the node: its row kept no
    ``stopped_at`` and the cluster took a clean stop for a crash (``GatewayNodeDown``).
    Twisted waits for the returned Deferred. Under ``rungateway`` the node is already stopped
    by then and ``stop()`` returns at once. False when no reactor runs (uvicorn).
    """
    import sys

    if "twisted.internet.reactor" not in sys.modules:
        return False
    import asyncio

    from twisted.internet import defer
    from twisted.internet import reactor as installed

    reactor: Any = installed  # zope interfaces confuse mypy (self-less methods)
    if not reactor.running:
        return False

    def stop() -> defer.Deferred[None]:
        logger.info("server shutting down: stopping node %s", node.node_id)
        return defer.Deferred.fromFuture(asyncio.ensure_future(node.stop()))

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    return True


def lifespan_for(node: NodeProvider) -> ASGIApp:
    """ASGI lifespan: start the node at startup, stop it (drain) at shutdown."""

    async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "lifespan.startup":
                try:
                    await node().ensure_started()
                except Exception as exc:
                    logger.exception("the node could not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif kind == "lifespan.shutdown":
                try:
                    await node().stop()
                except Exception as exc:
                    logger.exception("the node did not stop cleanly")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    return lifespan


async def refuse_websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Any other WebSocket path: refuse the handshake (403), not crash on it (500)."""
    if (await receive())["type"] == "websocket.connect":
        await send({"type": "websocket.close"})


def websocket_routes_for(gateway_consumer: ASGIApp) -> ASGIApp:
    """``/ws/`` to the gateway consumer; any other path refused.

    Not Channels' ``URLRouter``: it copies the scope (with its headers) for every
    connection and keeps the copy as long as the connection lives, half a kilobyte per
    idle client for a route table of one path.
    """
    from gateway_node import origins

    async def websocket_routes(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if path == "/ws/" and origins.allowed(scope["headers"]):
            await gateway_consumer(scope, receive, send)
        else:
            # Another path, or a browser page from an origin not in GATEWAY_ALLOWED_ORIGINS.
            await refuse_websocket(scope, receive, send)

    return websocket_routes


def build_application(*, node: NodeProvider | None = None) -> Any:
    """The whole ASGI application of this process; ``node`` defaults to its node
    (``gateway_node.node.get_node``)."""
    from django.core.asgi import get_asgi_application

    django_app = get_asgi_application()  # sets Django up: the imports below need the apps

    from channels.routing import ProtocolTypeRouter

    from gateway_node.node import get_node
    from push_app.api.hotpath import PushRoutes
    from sessions_app.consumers import GatewayConsumer

    provider: NodeProvider = node or get_node
    return ProtocolTypeRouter({
        # POST /api/v1/push and /push/batch are answered before Django's middleware and DRF
        # (push_app/api/hotpath.py); every other request goes on to Django.
        "http": NodeStarter(PushRoutes(django_app, node=provider), node=provider),
        "lifespan": lifespan_for(provider),
        "websocket": websocket_routes_for(GatewayConsumer.as_asgi(node=provider)),
    })
