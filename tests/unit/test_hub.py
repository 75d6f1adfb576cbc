from __future__ import annotations

import uuid

import pytest

from gateway_core import metrics
from sessions_app.close_codes import CloseCode
from sessions_app.hub import Hub
from sessions_app.recorder import SessionRecorder
from sessions_app.registry import SessionManager
from tests.support.sessions import make_session


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def hub() -> Hub:
    node_id = f"hub-{uuid.uuid4().hex[:8]}"  # fresh metric labels per test
    recorder = SessionRecorder(node_id=node_id, address="", broker="local", started_at=0.0,
                               node_timeout_s=30)
    hub = Hub(node_id=node_id, registry=SessionManager(), recorder=recorder)
    hub.clock = lambda: 5000.0
    return hub


async def test_open_registers_and_counts(hub: Hub):
    session = make_session("u1", "s1")
    await hub.open(session, max_per_user=5)
    assert hub.registry.get("s1") is session
    assert session.connection.closes == []
    assert sample("gateway_connects_total", node=hub.node_id, app="default") == 1


async def test_open_evicts_the_oldest_with_4009(hub: Hub):
    first, second, third = (make_session("u1", f"s{i}") for i in range(3))
    await hub.open(first, max_per_user=2)
    await hub.open(second, max_per_user=2)
    await hub.open(third, max_per_user=2)
    assert first.connection.closes == [CloseCode.REPLACED]
    assert second.connection.closes == []
    assert third.connection.closes == []
    assert list(hub.registry.sessions_of(["u1"])) == [second, third]
    assert sample("gateway_disconnects_total", node=hub.node_id, app="default", code="4009") == 1
    snap = hub.recorder.snapshot(hub.registry, now=5000.0)
    assert snap.closed == [("s0", 5000.0, 4009)]


async def test_close_is_idempotent(hub: Hub):
    session = make_session("u1", "s1")
    await hub.open(session, max_per_user=5)
    await hub.close(session, CloseCode.DISCONNECTED)
    await hub.close(session, CloseCode.DISCONNECTED)
    await hub.close(session, CloseCode.HEARTBEAT_TIMEOUT)
    assert session.connection.closes == [4010]
    assert sample("gateway_disconnects_total", node=hub.node_id, app="default", code="4010") == 1
    assert sample("gateway_disconnects_total", node=hub.node_id, app="default", code="4008") == 0
    assert len(hub.registry) == 0


async def test_close_survives_a_connection_that_fails_to_close(hub: Hub):
    session = make_session("u1", "s1")

    async def broken_close(code):
        raise RuntimeError("socket gone")

    session.connection.close = broken_close
    await hub.open(session, max_per_user=5)
    await hub.close(session, CloseCode.DISCONNECTED)
    assert hub.registry.get("s1") is None


async def test_forget_after_client_disconnect_sends_nothing(hub: Hub):
    session = make_session("u1", "s1")
    await hub.open(session, max_per_user=5)
    hub.forget(session, code=1001)
    hub.forget(session, code=1001)
    await hub.close(session, CloseCode.DISCONNECTED)
    assert session.connection.closes == []
    assert sample("gateway_disconnects_total", node=hub.node_id, app="default", code="1001") == 1
    assert hub.recorder.snapshot(hub.registry, now=1.0).closed == [("s1", 5000.0, 1001)]


async def test_sweep_closes_silent_sessions_with_4008(hub: Hub):
    silent = make_session("u1", "silent", at=1000.0)
    alive = make_session("u2", "alive", at=1000.0)
    await hub.open(silent, max_per_user=5)
    await hub.open(alive, max_per_user=5)
    alive.last_seen = 1050.0
    assert await hub.sweep(timeout_s=60, now=1070.0) == 1
    assert silent.connection.closes == [4008]
    assert alive.connection.closes == []
    assert hub.registry.get("silent") is None
    assert hub.registry.get("alive") is alive
    assert sample("gateway_heartbeat_timeouts_total", node=hub.node_id, app="default") == 1
    assert await hub.sweep(timeout_s=60, now=1070.0) == 0
    assert silent.connection.closes == [4008]


async def test_drain_closes_everything_with_4012_and_sets_draining(hub: Hub):
    sessions = [make_session(f"u{i % 2}", f"s{i}") for i in range(4)]
    for session in sessions:
        await hub.open(session, max_per_user=5)
    assert hub.draining is False
    assert await hub.drain() == 4
    assert hub.draining is True
    assert [s.connection.closes for s in sessions] == [[4012]] * 4
    assert len(hub.registry) == 0
    assert sample("gateway_disconnects_total", node=hub.node_id, app="default", code="4012") == 4
