"""Alerts under real faults: ``runalerts`` against real nodes' database, notifying a local
webhook sink. A node killed (node down, then back); the broker gone while pushes flood
in (relay backlog, failed pushes, publish errors, /readyz 503), then back."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import pytest

from tests.monitoring.support import ThrowawayRedis, WebhookSink
from tests.support.clients import Api, eventually, metric, metrics_text, uid
from tests.support.gateway import REPO, GatewayProcess, manage

pytestmark = pytest.mark.e2e

NodeStarter = Callable[..., GatewayProcess]
FAST_NODE = {"GATEWAY_NODE_TIMEOUT": "3", "GATEWAY_RECORD_INTERVAL": "1"}


def alerts_env(gw: GatewayProcess, sink: WebhookSink, **extra: str) -> dict[str, str]:
    """The node's own environment (so its database) plus the alerting settings."""
    return {**gw.env, "GATEWAY_ALERT_WEBHOOK_URL": sink.url, **extra}


def runalerts_once(env: dict[str, str]) -> str:
    return manage(env, "runalerts", "--once")


def test_a_killed_node_fires_once_then_resolves_when_it_is_back(
    start_node: NodeStarter, sink: WebhookSink,
) -> None:
    gw = start_node("mon-down", **FAST_NODE)
    env = alerts_env(gw, sink)
    time.sleep(1.5)  # the node's first beat
    assert "firing 0" in runalerts_once(env)
    gw.kill()
    time.sleep(4)  # past GATEWAY_NODE_TIMEOUT
    # The loop form, as a service runs it: it fires once however many rounds it makes, and
    # stops cleanly on SIGTERM.
    loop = subprocess.Popen(
        [sys.executable, "manage.py", "runalerts", "--interval", "0.3"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        sink.wait_for(("firing", "GatewayNodeDown", "mon-down"))
        time.sleep(1.5)  # several more rounds
    finally:
        loop.send_signal(signal.SIGTERM)
        out, err = loop.communicate(timeout=10)
    assert loop.returncode == 0, err
    assert out.count("firing 1") >= 3, out
    assert sink.notices() == [("firing", "GatewayNodeDown", "mon-down")]
    assert "firing 1; new: none" in runalerts_once(env)  # and no repeat from cron either
    start_node("mon-down", **FAST_NODE)  # the same node (id, database) again
    deadline = time.monotonic() + 20
    while ("resolved", "GatewayNodeDown", "mon-down") not in sink.notices():
        assert time.monotonic() < deadline, sink.notices()
        runalerts_once(env)
    assert sink.notices() == [("firing", "GatewayNodeDown", "mon-down"),
                              ("resolved", "GatewayNodeDown", "mon-down")]
    alert_row = manage(env, "shell", "-c", "from monitoring.models import Alert; "
                           "a = Alert.objects.get(); print(a.rule, a.subject, a.firing)")
    assert alert_row.strip().splitlines()[-1] == "GatewayNodeDown mon-down False"


async def readyz(gw: GatewayProcess) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        return await http.get(f"{gw.url}/readyz")


@pytest.mark.redis
async def test_broker_down_flood_fires_backlog_and_failures_then_resolves(
    start_node: NodeStarter, sink: WebhookSink, throwaway_redis: ThrowawayRedis,
) -> None:
    node = "mon-broker"
    gw = start_node(node, GATEWAY_BROKER="redis", REDIS_URL=throwaway_redis.url,
                    GATEWAY_ROCKETMQ_TOPIC=f"mon-{uid('t')}", **FAST_NODE)
    window_s = 12
    env = alerts_env(gw, sink, GATEWAY_ALERT_BACKLOG_AGE="1",
                     GATEWAY_ALERT_WINDOW=str(window_s))

    def m(text: str, name: str, **labels: str) -> float:
        return metric(text, name, node=node, **labels)

    await eventually(lambda: readyz(gw), lambda r: r.status_code == 200, within=20,
                     what="/readyz 200 with the broker up")
    throwaway_redis.stop()
    down = await eventually(lambda: readyz(gw), lambda r: r.status_code == 503, within=20,
                            what="/readyz 503 with the broker down")
    assert down.json()["checks"]["broker"] != "ok"
    assert down.json()["checks"]["database"] == "ok"

    async with Api(gw, gw.api_key("mon-flood")) as api:
        # A flood while the broker is down: every push is kept (202), none is lost.
        batch = await api.http.post("/api/v1/push/batch", json={"pushes": [
            {"users": [uid("f")], "data": i} for i in range(200)]})
        assert batch.status_code == 202, batch.text
        await asyncio.gather(*(api.push_to([uid("f")], i) for i in range(20)))
        await api.push({"users": [uid("short")], "data": "gone", "ttl": 1})
        short_expired = time.monotonic() + 1
        text = await eventually(
            lambda: metrics_text(gw),
            lambda t: m(t, "gateway_relay_backlog") >= 220
            and m(t, "gateway_broker_errors_total", op="publish") > 0,
            within=15, what="relay backlog and publish errors",
        )
        assert m(text, "gateway_pushes_total", client="mon-flood", status="accepted") == 221
        expected = {("firing", "GatewayRelayBacklog", node),
                    ("firing", "GatewayPushesFailed", node)}
        deadline = time.monotonic() + 15
        # Past the backlog age, and the relay's next try fails the short push (ttl).
        while set(sink.notices()) != expected:
            assert time.monotonic() < deadline, sink.notices()
            await asyncio.sleep(0.5)
            await asyncio.to_thread(runalerts_once, env)
        text = await metrics_text(gw)
        assert m(text, "gateway_relay_oldest_push_age_seconds") >= 1
        runalerts_once(env)
        assert len(sink.notices()) == 2  # still firing: nothing new

        throwaway_redis.start()  # the broker is back (same port, empty)
        await eventually(lambda: readyz(gw), lambda r: r.status_code == 200, within=30,
                         what="/readyz 200 with the broker back")
        text = await eventually(lambda: metrics_text(gw),
                                lambda t: m(t, "gateway_relay_backlog") == 0, within=30,
                                what="the backlog published")
        # Routed (REDIS_URL set): pushes to users connected nowhere are published without a
        # broker message (docs/cluster.md, "Routing"); broadcast mode puts each on the broker.
        assert (m(text, "gateway_broker_published_total")
                + m(text, "gateway_routing_total", how="unheld")) >= 220
        runalerts_once(env)
        assert ("resolved", "GatewayRelayBacklog", node) in sink.notices()
        # The failure leaves the alert window.
        await asyncio.sleep(max(0.0, short_expired + window_s + 0.5 - time.monotonic()))
        runalerts_once(env)
        assert sink.notices()[-1] == ("resolved", "GatewayPushesFailed", node)
        assert len(sink.notices()) == 4
