from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest
from channels.layers import InMemoryChannelLayer

from gateway_core import metrics
from gateway_core.messages import ControlMessage, PushMessage, encode, encode_batch
from push_app.ledger import DeliveryLedger
from sessions_app.delivery import (
    NODE_GROUP,
    STALE_GRACE_MS,
    ChannelLayerForwarder,
    ChannelLayerListener,
    Deliverer,
)
from sessions_app.hub import Hub
from sessions_app.recorder import SessionRecorder
from sessions_app.registry import SessionManager
from tests.support.sessions import FakeConnection, make_session

STARTED_MS = 1_800_000_000_000


class Setup:
    def __init__(self) -> None:
        self.node_id = f"deliver-{uuid.uuid4().hex[:8]}"
        self.registry = SessionManager()
        self.ledger = DeliveryLedger(node_id=self.node_id)
        recorder = SessionRecorder(node_id=self.node_id, address="", broker="local",
                                   started_at=0.0, node_timeout_s=30)
        self.hub = Hub(node_id=self.node_id, registry=self.registry, recorder=recorder)
        self.deliverer = Deliverer(node_id=self.node_id, registry=self.registry,
                                   on_delivered=self.ledger.delivered, close_session=self.hub.close,
                                   drop_session=self.hub.drop,
                                   started_ms=STARTED_MS)
        self.now_ms = STARTED_MS + 1000
        self.deliverer.clock_ms = lambda: self.now_ms

    def add(self, user_id: str, session_id: str, *, accept: bool = True):
        session = make_session(user_id, session_id,
                               connection=FakeConnection(session_id, accept=accept))
        self.registry.register(session, max_per_user=10)
        return session

    def skipped(self, reason: str) -> float:
        return metrics.REGISTRY.get_sample_value(
            "gateway_messages_skipped_total", {"node": self.node_id, "reason": reason}) or 0.0


def push(push_id: str = "p1", users=("u1",), **overrides) -> PushMessage:
    fields = dict(id=push_id, users=users, data_json='{"hello":"world"}', topic="t",
                  accepted_ms=STARTED_MS + 500)
    fields.update(overrides)
    return PushMessage(**fields)


@pytest.fixture
def setup() -> Setup:
    return Setup()


async def test_targeted_push_reaches_only_the_targets(setup: Setup):
    a1, a2 = setup.add("a", "a1"), setup.add("a", "a2")
    b1 = setup.add("b", "b1")
    c1 = setup.add("c", "c1")
    assert await setup.deliverer.deliver_push(push(users=("a", "c", "nobody"))) == 3
    assert [len(s.connection.frames) for s in (a1, a2, b1, c1)] == [1, 1, 0, 1]
    frame = json.loads(a1.connection.frames[0])
    assert frame == {"type": "push", "id": "p1", "topic": "t", "data": {"hello": "world"},
                     "ts": STARTED_MS + 500}
    assert setup.ledger.take() == {"p1": (3, 0)}


async def test_broadcast_reaches_everyone_with_one_frame_object(setup: Setup):
    sessions = [setup.add(f"u{i}", f"s{i}") for i in range(5)]
    await setup.deliverer.handle(push(users=None))
    frames = [s.connection.frames[0] for s in sessions]
    assert all(f is frames[0] for f in frames)
    assert json.loads(frames[0])["id"] == "p1"
    assert setup.ledger.take() == {"p1": (5, 0)}


async def test_frames_refused_by_a_slow_client_are_not_counted(setup: Setup):
    setup.add("u", "fast")
    setup.add("u", "slow", accept=False)
    assert await setup.deliverer.deliver_push(push(users=("u",))) == 1
    assert setup.ledger.take() == {"p1": (1, 0)}


async def test_duplicates_are_skipped(setup: Setup):
    session = setup.add("u1", "s1")
    await setup.deliverer.handle(push())
    await setup.deliverer.handle(push())
    await setup.deliverer.handle_raw(encode(push()))
    assert len(session.connection.frames) == 1
    assert setup.skipped("duplicate") == 2


async def test_stale_messages_are_skipped(setup: Setup):
    session = setup.add("u1", "s1")
    edge = STARTED_MS - STALE_GRACE_MS
    await setup.deliverer.handle(push("old", accepted_ms=edge - 10_000, published_ms=edge - 1))
    await setup.deliverer.handle(push("old-unpublished", accepted_ms=edge - 1))
    assert session.connection.frames == []
    assert setup.skipped("stale") == 2
    # Accepted long ago but published within the grace: fresh.
    await setup.deliverer.handle(push("late", accepted_ms=edge - 10_000, published_ms=edge))
    assert [json.loads(f)["id"] for f in session.connection.frames] == ["late"]


async def test_expired_messages_are_skipped(setup: Setup):
    session = setup.add("u1", "s1")
    await setup.deliverer.handle(push("gone", expires_ms=setup.now_ms))
    await setup.deliverer.handle(push("alive", expires_ms=setup.now_ms + 1))
    assert [json.loads(f)["id"] for f in session.connection.frames] == ["alive"]
    assert setup.skipped("expired") == 1


async def test_nobody_here_counts_nothing(setup: Setup):
    assert await setup.deliverer.deliver_push(push(users=("absent",))) == 0
    assert setup.ledger.take() == {}
    assert setup.skipped("no_local_session") == 1


@pytest.mark.parametrize("raw", [b"garbage", b'{"v":99}', b"[1]", b"\xff\xfe"])
async def test_malformed_raw_bytes_are_logged_and_skipped(setup: Setup, raw, caplog):
    session = setup.add("u1", "s1")
    with caplog.at_level(logging.WARNING, logger="gateway.delivery"):
        await setup.deliverer.handle_raw(raw)
    assert session.connection.frames == []
    assert setup.skipped("malformed") == 1
    assert "malformed broker message" in caplog.text
    # The deliverer carries on with the next good message.
    await setup.deliverer.handle_raw(encode(push()))
    assert len(session.connection.frames) == 1


async def test_control_closes_users_and_listed_sessions_with_4010(setup: Setup):
    a1, a2 = setup.add("a", "a1"), setup.add("a", "a2")
    b1, b2 = setup.add("b", "b1"), setup.add("b", "b2")
    c1 = setup.add("c", "c1")
    order = ControlMessage(id="c-1", action="disconnect", users=("a", "ghost"),
                           session_ids=("b2", "a1", "missing"), reason="ops",
                           issued_ms=setup.now_ms)
    await setup.deliverer.handle_raw(encode(order))
    assert [s.connection.closes for s in (a1, a2, b1, b2, c1)] == [[4010], [4010], [], [4010], []]
    assert sorted(s.session_id for s in setup.registry.all_sessions()) == ["b1", "c1"]
    # Applied again, it finds nothing left to close.
    assert await setup.deliverer.apply_control(order) == 0


async def test_seen_ids_are_bounded(setup: Setup):
    session = setup.add("u1", "s1")
    setup.deliverer.max_seen = 2
    for push_id in ("p1", "p2", "p3"):
        await setup.deliverer.handle(push(push_id))
    await setup.deliverer.handle(push("p1"))  # forgotten, so delivered again
    assert len(session.connection.frames) == 4


async def test_forwarder_sends_raw_bytes_to_the_node_group():
    sent = []

    class Layer:
        async def group_send(self, group, message):
            sent.append((group, message))

    forwarder = ChannelLayerForwarder(Layer(), node_id="fwd-node")
    forwarder.clock = lambda: 1234.5
    await forwarder(b"raw")
    assert sent == [("gateway.node", {"type": "gateway.message", "raw": b"raw",
                                      "forwarded_at": 1234.5})]


async def test_listener_delivers_what_the_forwarder_sends(setup: Setup):
    session = setup.add("u1", "s1")
    layer = InMemoryChannelLayer()
    task = asyncio.create_task(ChannelLayerListener(layer, setup.deliverer).run())
    try:
        for _ in range(200):
            if layer.groups.get(NODE_GROUP):
                break
            await asyncio.sleep(0.005)
        forward = ChannelLayerForwarder(layer)
        await forward(b"not a message")
        await forward(encode(push()))
        for _ in range(200):
            if session.connection.frames:
                break
            await asyncio.sleep(0.005)
        assert [json.loads(f)["id"] for f in session.connection.frames] == ["p1"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert not layer.groups.get(NODE_GROUP)


async def test_handle_raw_takes_a_message_object_or_a_batch_of_bytes(setup: Setup):
    session = setup.add("u1", "s1")
    await setup.deliverer.handle_raw(push("direct"))  # what the local broker hands over
    await setup.deliverer.handle_raw(encode_batch([push("b1"), push("b2"), push("direct")]))
    assert [json.loads(f)["id"] for f in session.connection.frames] == ["direct", "b1", "b2"]
    assert setup.skipped("duplicate") == 1


async def test_forwarder_encodes_a_message_object():
    sent = []

    class Layer:
        async def group_send(self, group, message):
            sent.append(message["raw"])

    await ChannelLayerForwarder(Layer(), node_id="fwd-node")(push())
    assert sent == [encode(push())]


async def test_a_connection_that_raises_is_dropped_and_the_others_get_the_push(setup: Setup):
    first = setup.add("a", "a1")
    broken = make_session("a", "a2", connection=FakeConnection(
        "a2", raises=RuntimeError("Attempt to send on a closed protocol")))
    setup.registry.register(broken, max_per_user=10)
    last = setup.add("b", "b1")
    failures = metrics.REGISTRY.get_sample_value(
        "gateway_session_failures_total", {"node": setup.node_id, "where": "write"})

    assert await setup.deliverer.deliver_push(push(users=("a", "b"))) == 2
    assert (len(first.connection.frames), len(last.connection.frames)) == (1, 1)
    assert setup.registry.get("a2") is None and broken.connection.aborted
    assert metrics.REGISTRY.get_sample_value(
        "gateway_session_failures_total", {"node": setup.node_id, "where": "write"}
    ) == failures + 1
    # The next push goes on as usual, to the sessions that remain.
    assert await setup.deliverer.handle(push("p2", users=("a", "b"))) is None
    assert (len(first.connection.frames), len(last.connection.frames)) == (2, 2)
    # Only a written push can be acked by the connection it was written to.
    assert first.take_ack("p1") and first.take_ack("p2") and not broken.take_ack("p1")


async def test_a_message_whose_delivery_fails_is_skipped_and_the_next_goes_on(setup: Setup):
    session = setup.add("a", "a1")
    before = setup.skipped("failed")
    poison = push("p-poison", users=("a",), data_json='"\ud800"')  # cannot be encoded
    await setup.deliverer.handle(poison)
    assert setup.skipped("failed") == before + 1
    await setup.deliverer.handle(push("p-next", users=("a",)))
    assert [json.loads(f)["id"] for f in session.connection.frames] == ["p-next"]
