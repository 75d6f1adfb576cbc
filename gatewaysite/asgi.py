"""ASGI entry point: ``/ws/`` to the gateway consumer, everything else to Django.

Works under ``rungateway`` and under a bare ``daphne gatewaysite.asgi:application``; in
the latter the node starts its loops on the first request or connection.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gatewaysite.settings")
django_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from gatewaysite.node import get_node  # noqa: E402
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


async def refuse_websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Any other WebSocket path: refuse the handshake (403), not crash on it (500)."""
    if (await receive())["type"] == "websocket.connect":
        await send({"type": "websocket.close"})


application = ProtocolTypeRouter({
    "http": NodeStarter(django_app),
    "websocket": URLRouter([
        path("ws/", GatewayConsumer.as_asgi()),
        re_path(r"", refuse_websocket),  # type: ignore[arg-type]
    ]),
})
