"""ASGI entry point: ``/ws/`` to the gateway consumer, everything else to Django.

Works under ``rungateway`` and under a bare ``daphne gatewaysite.asgi:application``; in
the latter the node starts its loops on the first request or connection. Under a server
with the ASGI lifespan protocol (uvicorn) the node starts with the server and stops
(drains, 4012) when it shuts down.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gatewaysite.settings")
django_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from gatewaysite import origins  # noqa: E402
from gatewaysite.node import get_node  # noqa: E402
from push_app.api.hotpath import PushRoutes  # noqa: E402
from sessions_app.consumers import GatewayConsumer  # noqa: E402


class NodeStarter:
    """Starts this process's node before the first request (Daphne has no lifespan)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        node = get_node()
        if not node.running:
            await node.ensure_started()
        await self.app(scope, receive, send)


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI lifespan: start the node at startup, stop it (drain) at shutdown."""
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "lifespan.startup":
            try:
                await get_node().ensure_started()
            except Exception as exc:
                logging.getLogger("gateway.node").exception("the node could not start")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            try:
                await get_node().stop()
            except Exception as exc:
                logging.getLogger("gateway.node").exception("the node did not stop cleanly")
                await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.shutdown.complete"})
            return


async def refuse_websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Any other WebSocket path: refuse the handshake (403), not crash on it (500)."""
    if (await receive())["type"] == "websocket.connect":
        await send({"type": "websocket.close"})


gateway_consumer = GatewayConsumer.as_asgi()


async def websocket_routes(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/ws/`` to the gateway consumer; any other path refused.

    Not Channels' ``URLRouter``: it copies the scope (with its headers) for every
    connection and keeps the copy as long as the connection lives, half a kilobyte per
    idle client for a route table of one path.
    """
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    if path == "/ws/" and origins.allowed(scope["headers"]):
        await gateway_consumer(scope, receive, send)
    else:
        # Another path, or a browser page from an origin not in GATEWAY_ALLOWED_ORIGINS.
        await refuse_websocket(scope, receive, send)


application = ProtocolTypeRouter({
    # POST /api/v1/push and /push/batch are answered before Django's middleware and DRF
    # (push_app/api/hotpath.py); every other request goes on to Django.
    "http": NodeStarter(PushRoutes(django_app)),
    "lifespan": lifespan,
    "websocket": websocket_routes,
})
