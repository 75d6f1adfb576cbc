"""Metrics in-process: bounded labels, bound children, samplers, loop lag, channel-layer lag,
and multi-process aggregation (real processes sharing one PROMETHEUS_MULTIPROC_DIR)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer

from gateway_core import metrics
from gateway_core.brokers.local import LocalBroker
from gateway_core.messages import PushMessage, encode
from push_app.ledger import DeliveryLedger
from push_app.relay import Relay
from sessions_app.delivery import ChannelLayerForwarder, ChannelLayerListener, Deliverer
from sessions_app.registry import SessionManager
from tests.support.gateway import REPO
from tests.support.sessions import FakeConnection, make_session

_SAMPLE = re.compile(r"^(gateway_\w+?)(?:\{(.*)\})? ")


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_close_codes_are_bounded() -> None:
    assert metrics.close_code_label(4008) == "4008"
    assert metrics.close_code_label(1006) == "1006"
    assert metrics.close_code_label(4777) == "other"
    assert metrics.close_code_label(2999) == "other"
    bound = metrics.bound("mon-codes")
    for code in range(4000, 4999):
        bound.disconnect(code)
    codes = {
        s.labels["code"] for m in metrics.REGISTRY.collect() if m.name == "gateway_disconnects"
        for s in m.samples if s.labels.get("node") == "mon-codes" and s.name.endswith("_total")
    }
    assert codes == {"4001", "4003", "4008", "4009", "4010", "4011", "4012", "4013", "4029",
                     "4030", "other"}
    assert sample("gateway_disconnects_total", node="mon-codes", app="default",
                  code="other") == 999 - 10


def test_bound_children_are_cached_and_exist_from_the_start() -> None:
    assert metrics.bound("mon-cache") is metrics.bound("mon-cache")
    text = metrics.render().decode()
    for line in (
        'gateway_messages_consumed_total{kind="push",node="mon-cache"} 0.0',
        'gateway_messages_skipped_total{node="mon-cache",reason="no_local_session"} 0.0',
        'gateway_frames_received_total{node="mon-cache",type="ping"} 0.0',
        'gateway_broker_errors_total{node="mon-cache",op="publish"} 0.0',
    ):
        assert line in text


def test_every_gateway_sample_has_a_node_label() -> None:
    metrics.bound("mon-labels").push("shop", "accepted")
    metrics.set_process("mon-labels", role="all", connections_ceiling=100)
    seen = set()
    for line in metrics.render().decode().splitlines():
        match = _SAMPLE.match(line)
        if match:
            seen.add(match.group(1))
            assert 'node="' in (match.group(2) or ""), line
    assert {"gateway_connections_ceiling", "gateway_pushes_total",
            "gateway_processes"} <= seen


def test_samplers_set_gauges_before_a_scrape() -> None:
    state: dict[str, Any] = {"apps": {"default": (3, 2), "shop": (1, 1)}, "backlog": 7}
    metrics.bind_gauges("mon-gauges", by_app=lambda: state["apps"],
                        backlog=lambda: state["backlog"], oldest_age_s=lambda: 12.5)
    try:
        state.update(apps={"default": (4, 2)}, backlog=0)
        text = metrics.render().decode()
        assert 'gateway_connections{app="default",node="mon-gauges"} 4.0' in text
        assert 'gateway_users{app="default",node="mon-gauges"} 2.0' in text
        # An app whose last session here closed reads 0, not its last value.
        assert 'gateway_connections{app="shop",node="mon-gauges"} 0.0' in text
        assert 'gateway_relay_backlog{node="mon-gauges"} 0.0' in text
        assert 'gateway_relay_oldest_push_age_seconds{node="mon-gauges"} 12.5' in text
    finally:
        metrics.unbind_gauges("mon-gauges")


async def test_event_loop_lag_is_the_sleep_overshoot() -> None:
    now = [100.0]
    rounds = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds + [0.0, 0.3][len(rounds) % 2]  # every other sleep wakes 0.3 s late
        rounds.append(seconds)
        if len(rounds) == 4:
            raise asyncio.CancelledError

    refreshed = []
    metrics.bind_gauges("mon-lag", by_app=lambda: refreshed.append(1) or {},
                        backlog=lambda: 0)
    refreshed.clear()
    try:
        with pytest.raises(asyncio.CancelledError):
            await metrics.watch_event_loop("mon-lag", "web", interval_s=0.5,
                                           clock=lambda: now[0], sleep=sleep)
    finally:
        metrics.unbind_gauges("mon-lag")
    labels = {"node": "mon-lag", "role": "web"}
    assert sample("gateway_event_loop_lag_seconds_count", **labels) == 3
    assert sample("gateway_event_loop_lag_seconds_sum", **labels) == pytest.approx(0.3)
    assert sample("gateway_event_loop_lag_seconds_bucket", le="0.25", **labels) == 2
    assert len(refreshed) == 3


def test_relay_reports_its_oldest_push() -> None:
    relay = Relay(broker=LocalBroker(node_id="mon-relay"), db=None, node_id="mon-relay")  # type: ignore[arg-type]
    relay.clock = lambda: 1000.0
    assert relay.oldest_age_s() == 0.0
    relay.submit(PushMessage(id="a", users=("u",), data_json="1", topic=None,
                             accepted_ms=990_000))
    relay.submit(PushMessage(id="b", users=("u",), data_json="1", topic=None,
                             accepted_ms=995_000))
    assert relay.oldest_age_s() == 10.0
    assert relay.backlog == 2


async def test_channel_layer_lag_from_forwarder_to_listener() -> None:
    node_id = "mon-layer"
    registry = SessionManager()
    session = make_session("u1", "s1", connection=FakeConnection("s1"))
    registry.register(session, max_per_user=5)
    deliverer = Deliverer(node_id=node_id, registry=registry,
                          on_delivered=DeliveryLedger(node_id=node_id).delivered,
                          close_session=lambda s, c: None, drop_session=lambda s: None,
                          started_ms=0)
    layer = InMemoryChannelLayer()
    listener = ChannelLayerListener(layer, deliverer)
    listener.clock = lambda: 50.25
    forwarder = ChannelLayerForwarder(layer, node_id=node_id)
    forwarder.clock = lambda: 50.0
    task = asyncio.create_task(listener.run())
    try:
        for _ in range(200):
            if layer.groups.get("gateway.node"):
                break
            await asyncio.sleep(0.005)
        message = PushMessage(id="lag1", users=("u1",), data_json="1", topic=None,
                              accepted_ms=int(__import__("time").time() * 1000))
        await forwarder(encode(message))
        for _ in range(200):
            if session.connection.frames:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sample("gateway_messages_forwarded_total", node=node_id) == 1
    assert sample("gateway_channel_layer_lag_seconds_count", node=node_id) == 1
    assert sample("gateway_channel_layer_lag_seconds_sum", node=node_id) == 0.25
    assert sample("gateway_deliveries_total", node=node_id, app="default") == 1


# --- multi-process mode ----------------------------------------------------------------

_WORKER = textwrap.dedent("""
    import os, sys, time
    from gateway_core import metrics
    node, role, connections = sys.argv[1], sys.argv[2], int(sys.argv[3])
    metrics.bound(node).app("default").deliveries.inc(connections)
    metrics.bound(node).app("default").push_latency.observe(0.01)
    metrics.set_process(node, role=role)
    metrics.bind_gauges(node, by_app=lambda: {"default": (connections, 1)},
                        backlog=lambda: 0)
    print("ready", flush=True)
    if sys.argv[4] == "wait":
        time.sleep(60)
""")


def _render_in(env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-c", "from gateway_core import metrics; "
         "print(metrics.render().decode())"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True, timeout=30,
    ).stdout


def test_multiprocess_mode_sums_processes_and_forgets_dead_ones(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    worker = [sys.executable, "-c", _WORKER]
    # One process that exits normally, one that stays, one killed without warning.
    subprocess.run([*worker, "mp", "web", "3", "exit"], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=30)
    alive = subprocess.Popen([*worker, "mp", "web", "5", "wait"], cwd=REPO, env=env,
                             stdout=subprocess.PIPE)
    killed = subprocess.Popen([*worker, "mp", "consumer", "7", "wait"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE)
    try:
        for proc in (alive, killed):
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        text = _render_in(env)
        # Counters and histograms add up over every process, dead or alive.
        assert 'gateway_deliveries_total{app="default",node="mp"} 15.0' in text
        assert 'gateway_push_latency_seconds_count{app="default",node="mp"} 3.0' in text
        # Live gauges add up over the live processes only.
        assert 'gateway_connections{app="default",node="mp"} 12.0' in text
        assert 'gateway_processes{node="mp",role="web"} 1.0' in text
        assert 'gateway_processes{node="mp",role="consumer"} 1.0' in text
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        text = _render_in(env)
        assert 'gateway_deliveries_total{app="default",node="mp"} 15.0' in text
        assert 'gateway_connections{app="default",node="mp"} 5.0' in text
        assert 'role="consumer"' not in text
    finally:
        for proc in (alive, killed):
            proc.kill()
            proc.wait(10)


def test_a_process_can_serve_its_own_metrics() -> None:
    """``runconsumer --metrics-port``: for nodes whose processes share no multiproc dir."""
    import httpx

    metrics.bound("mon-serve").forwarded.inc()
    server = metrics.serve(0, "127.0.0.1")
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        response = httpx.get(f"{base}/metrics", trust_env=False, timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert 'gateway_messages_forwarded_total{node="mon-serve"} 1.0' in response.text
        assert httpx.get(f"{base}/other", trust_env=False, timeout=5).status_code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_runconsumer_refuses_a_taken_metrics_port(settings) -> None:
    import socket

    from django.core.management import CommandError, call_command

    settings.GATEWAY_BROKER = "redis"
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(CommandError, match="cannot serve metrics"):
            call_command("runconsumer", "--metrics-port", str(taken.getsockname()[1]))
