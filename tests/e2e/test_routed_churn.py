"""Routed delivery under churn, on each server (daphne, uvicorn): clients of the routed
users connect and leave (politely or by dropping TCP) while kept pushes flow to them and
to a bystander. The bystander gets every push sent to it, every churned user gets every
kept push on some connection, and the presence map ends up holding exactly the bystander:
no connection, however it ended, is left behind in the map."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable

import pytest
import websockets

from tests.support.clients import (
    Api,
    eventually,
    make_token,
    metric,
    metrics_text,
    session,
    uid,
    ws_connect,
)
from tests.support.gateway import SERVERS, GatewayProcess
from tests.support.services import redis_url

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

NodeStarter = Callable[..., GatewayProcess]
SOAK_S = 8.0
CHURNERS = 8


async def _churn(gw: GatewayProcess, user: str, stop_at: float, got: set[str]) -> None:
    n = 0
    while time.monotonic() < stop_at:
        n += 1
        try:
            ws = await ws_connect(gw, make_token(user))
        except (OSError, websockets.WebSocketException, TimeoutError):
            continue
        try:
            with contextlib.suppress(TimeoutError, websockets.WebSocketException):
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 0.05 * (n % 4)))
                    if frame["type"] == "push":
                        got.add(frame["id"])
                        await ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
        finally:
            if n % 2:
                ws.transport.abort()
            else:
                await ws.close()


@pytest.mark.parametrize("server", SERVERS)
async def test_routed_delivery_under_churn_leaves_the_map_exact(
        start_node: NodeStarter, server: str) -> None:
    gw = start_node(f"routed-churn-{server}", server=server, GATEWAY_BROKER="redis",
                    REDIS_URL=redis_url(), GATEWAY_ROUTING="routed",
                    GATEWAY_ROCKETMQ_TOPIC=f"churn-{uuid.uuid4().hex[:8]}")
    churned = [uid("churn") for _ in range(CHURNERS)]
    got: dict[str, set[str]] = {u: set() for u in churned}
    sent: dict[str, set[str]] = {u: set() for u in churned}
    async with Api(gw, gw.api_key()) as api, session(gw) as (bystander, welcome):
        stop_at = time.monotonic() + SOAK_S
        to_bystander: list[str] = []

        async def pushes() -> None:
            i = 0
            while time.monotonic() < stop_at:
                user = churned[i % CHURNERS]
                sent[user].add(await api.push_to([user], {"i": i}, ttl=60))
                to_bystander.append(await api.push_to([welcome["user"]], {"i": i}))
                i += 1
                await asyncio.sleep(0.02)

        await asyncio.gather(pushes(), *(_churn(gw, u, stop_at, got[u]) for u in churned))
        bystander_got: set[str] = set()
        with contextlib.suppress(TimeoutError):
            while len(bystander_got) < len(to_bystander):
                frame = json.loads(await asyncio.wait_for(bystander.recv(), 5))
                if frame["type"] == "push":
                    bystander_got.add(frame["id"])
        assert bystander_got == set(to_bystander)

        # Each churned user connects once more and gets whatever it had not acked.
        for user in churned:
            ws = await ws_connect(gw, make_token(user))
            try:
                with contextlib.suppress(TimeoutError):
                    while sent[user] - got[user]:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                        if frame["type"] == "push":
                            got[user].add(frame["id"])
                            await ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
            finally:
                await ws.close()
            assert sent[user] <= got[user], f"{user} lost {len(sent[user] - got[user])}"

        # Only the bystander is left in the map (removals are written within a beat).
        await eventually(
            lambda: metrics_text(gw),
            lambda t: metric(t, "gateway_presence_map_connections", node=gw.node_id) == 1,
            within=10, what="the map holds exactly the bystander")
        text = await metrics_text(gw)
        assert metric(text, "gateway_routing_total", node=gw.node_id, how="fallback") == 0
