"""Operations endpoints: /healthz, /readyz, /metrics (PROTOCOL.md section 3)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from gateway_core import metrics
from gateway_core.conf import gateway_settings
from gateway_node import broker_process, metrics_access
from gateway_node.node import GatewayNode, get_node
from sessions_app.delivery import LOCAL_CHANNEL_PREFIX

#: Each dependency gets this long to answer /readyz.
CHECK_TIMEOUT_S = 2.0


async def healthz(request: HttpRequest) -> HttpResponse:
    """200 while the process serves and its delivery loop runs; 503 otherwise, so that a
    supervisor restarts a node that would answer 202 and deliver nothing."""
    node = get_node()
    healthy, reason = node.health()
    if healthy:
        return JsonResponse({"status": "ok", "node": node.node_id})
    return JsonResponse({"status": "unhealthy", "node": node.node_id, "detail": reason},
                        status=503)


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _channel_layer() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    # The listener's prefix: one receive serves both (see LOCAL_CHANNEL_PREFIX).
    channel = await layer.new_channel(LOCAL_CHANNEL_PREFIX)
    await layer.send(channel, {"type": "gateway.readyz"})
    await layer.receive(channel)


async def _consumer(node: GatewayNode) -> None:
    if not node.broker.consuming:
        raise RuntimeError("this node's broker consumer is not receiving yet")


async def _consumer_process(node: GatewayNode) -> None:
    """A web-role node's consumer is another process (``runconsumer``): its beat in Redis."""
    if not await broker_process.consumer_beating(node_id=node.node_id,
                                                 redis_url=gateway_settings.redis_url):
        raise RuntimeError(
            f"no beat from this node's runconsumer within {broker_process.BEAT_TTL_S} s "
            f"(is `manage.py runconsumer` running with GATEWAY_NODE_ID={node.node_id}?)")


async def readyz(request: HttpRequest) -> HttpResponse:
    node = get_node()
    checks: dict[str, Callable[[], Awaitable[None]]] = {
        "database": sync_to_async(_database, thread_sensitive=False),
        "channel_layer": _channel_layer,
        "broker": node.broker.check,
    }
    if node.role == "all" and node.running:
        checks["consumer"] = partial(_consumer, node)
    elif node.role == "web" and gateway_settings.redis_url:
        checks["consumer"] = partial(_consumer_process, node)
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT_S)
            results[name] = "ok"
        except TimeoutError:
            results[name] = f"no answer within {CHECK_TIMEOUT_S:g} s"
        except Exception as exc:
            results[name] = f"{exc.__class__.__name__}: {exc}"[:300]
    ready = all(value == "ok" for value in results.values())
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "node": node.node_id, "checks": results},
        status=200 if ready else 503,
    )


async def favicon(request: HttpRequest) -> HttpResponse:
    """``/favicon.ico``, which browsers ask for on every page: no icon, and no 404 (logged as a
    WARNING each time). Cached for a day so browsers stop asking."""
    response = HttpResponse(status=204)
    response["Cache-Control"] = "public, max-age=86400"
    return response


async def metrics_view(request: HttpRequest) -> HttpResponse:
    if not metrics_access.allowed(peer=request.META.get("REMOTE_ADDR"),
                                  authorization=request.headers.get("Authorization")):
        return JsonResponse(
            {"error": "forbidden", "detail": "metrics are open to GATEWAY_METRICS_ALLOW "
                                             "or a bearer GATEWAY_METRICS_TOKEN"},
            status=403,
        )
    if metrics.MULTIPROC_DIR:
        # Reads every process's files: off the event loop.
        body = await sync_to_async(metrics.render, thread_sensitive=False)()
    else:
        body = metrics.render()
    return HttpResponse(body, content_type="text/plain; version=0.0.4; charset=utf-8")
