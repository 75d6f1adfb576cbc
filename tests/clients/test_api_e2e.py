"""``GatewayAPI`` against real nodes: a forced 429 (a node with a tiny API rate) and a broker
outage (503), retried with the same idempotency key, so each push is stored exactly once."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_client import GatewayAPI

from tests.monitoring.support import ThrowawayRedis
from tests.support.clients import uid
from tests.support.gateway import GatewayProcess, base_env, free_port, spawn

pytestmark = [pytest.mark.e2e]
NodeStarter = Callable[..., GatewayProcess]


class Recording(httpx.AsyncHTTPTransport):
    """The real transport, remembering each request's push keys and the answer's status."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[list[str], int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        body = json.loads(request.content or b"{}")
        items = body.get("pushes", [body])
        self.seen.append(([i.get("idempotency_key") for i in items], response.status_code))
        return response


def stored_per_key(gw: GatewayProcess, keys: list[str]) -> dict[str, int]:
    """How many pushes the node's database holds for each idempotency key."""
    code = ("import json; from push_app.models import PushLog; "
            f"keys = {keys!r}; print(json.dumps({{k: PushLog.objects.filter("
            "idempotency_key=k).count() for k in keys}))")
    return dict(json.loads(gw.manage("shell", "-c", code).strip().splitlines()[-1]))


async def test_429_is_retried_after_retry_after_with_the_same_key(
    start_node: NodeStarter,
) -> None:
    gw = start_node("e2e-api-429", GATEWAY_API_RATE_PER_SECOND="2")
    transport = Recording()
    async with GatewayAPI(gw.url, key=gw.api_key("busy"), transport=transport) as api:
        answers = await asyncio.gather(*(api.push(users=[uid()], data=i) for i in range(6)))
    assert all(a["status"] == "accepted" for a in answers), answers
    assert len({a["id"] for a in answers}) == 6
    limited = [keys[0] for keys, status in transport.seen if status == 429]
    assert limited, f"the node never answered 429: {transport.seen}"
    accepted = [keys[0] for keys, status in transport.seen if status == 202]
    assert sorted(accepted) == sorted({keys[0] for keys, _ in transport.seen})
    assert set(limited) <= set(accepted), "each limited push was retried with its own key"
    assert stored_per_key(gw, accepted) == dict.fromkeys(accepted, 1)


LOW_BACKLOG_NODE = """
import os, sys
import django
django.setup()
from push_app import services
# The same knob as tests/unit/test_hotpath.py, lowered so that a real broker outage
# reaches it with a handful of pushes instead of 100,000.
services.MAX_RELAY_BACKLOG = int(os.environ["E2E_MAX_RELAY_BACKLOG"])
from django.core.management import execute_from_command_line
execute_from_command_line(["manage.py", "rungateway", *sys.argv[1:]])
"""


async def test_a_broker_outage_503_is_retried_and_the_push_is_stored_once(
    tmp_path: Path,
) -> None:
    redis = ThrowawayRedis(tmp_path)
    redis.start()
    port = free_port()
    data = tmp_path / "node"
    data.mkdir()
    env = base_env(data, "e2e-api-503", {
        "GATEWAY_BROKER": "redis", "REDIS_URL": redis.url, "E2E_MAX_RELAY_BACKLOG": "2",
    })
    gw = GatewayProcess(node_id="e2e-api-503", host="127.0.0.1", port=port, env=env,
                        log_path=data / "gateway.log")
    gw.proc = spawn([sys.executable, "-c", LOW_BACKLOG_NODE, "--host", "127.0.0.1",
                     "--port", str(port)], env, gw.log_path)
    try:
        gw.wait_readyz()
        key = gw.api_key("outage")
        redis.stop()
        restarted: list[float] = []

        async def sleep(delay_s: float) -> None:
            # The outage ends while the client waits to retry.
            if not restarted:
                redis.start()
            restarted.append(delay_s)
            await asyncio.sleep(delay_s)

        transport = Recording()
        async with GatewayAPI(gw.url, key=key, transport=transport, sleep=sleep) as api:
            # Pushes accepted while the broker is down wait in the relay, until its backlog
            # passes the limit: then the node answers 503 and stores nothing.
            fillers: list[Any] = []
            for i in range(3):
                fillers.append(await api.request("POST", "/api/v1/push", json={
                    "users": [uid()], "data": f"filler-{i}"}))
            answer = await api.push(users=[uid()], data="after the outage", ttl=60)
        statuses = [status for _, status in transport.seen[3:]]
        assert statuses[0] == 503 and statuses[-1] == 202, transport.seen
        keys = {k for keys, _ in transport.seen[3:] for k in keys}
        assert len(keys) == 1, transport.seen
        assert restarted and restarted[0] == 0.5, restarted
        assert stored_per_key(gw, list(keys)) == dict.fromkeys(keys, 1)
        assert answer["status"] == "accepted", answer
        assert all(f["status"] == "accepted" for f in fillers), fillers
    finally:
        gw.stop()
        redis.stop()
