from __future__ import annotations

import asyncio
import dataclasses
import functools
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async

from gateway_core.brokers.base import BrokerUnavailable
from gateway_core.brokers.local import LocalBroker
from gateway_core.messages import ControlMessage, PushMessage, decode_many, encode, encode_batch
from push_app import relay as relay_module
from push_app.models import PushLog, PushStatus
from push_app.relay import TTL_FAILURE, Relay
from push_app.services import push_message
from sessions_app.models import Node
from sessions_app.recorder import dead_node_ids
from tests.support.db import run_db

NOW = 1_800_000_000.0  # the relay's injected clock


def push(push_id: str, *, expires_ms: int | None = None) -> PushMessage:
    return PushMessage(id=push_id, users=("u1",), data_json="{}", topic=None,
                       accepted_ms=int(NOW * 1000), expires_ms=expires_ms)


def control(order_id: str, *, issued_ms: int) -> ControlMessage:
    return ControlMessage(id=order_id, action="disconnect", users=("u1",), session_ids=(),
                          reason="", issued_ms=issued_ms)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingDb:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def __call__(self, fn, *args):
        self.calls.append((fn.__name__, args))


def make_relay(db=None, *, node_id: str = "n1",
               dead_nodes=None) -> tuple[Relay, LocalBroker, Clock]:
    broker = LocalBroker(node_id=node_id)
    relay = Relay(broker=broker, db=db or RecordingDb(), node_id=node_id, dead_nodes=dead_nodes)
    clock = Clock()
    relay.clock = clock
    return relay, broker, clock


def published_ids(broker: LocalBroker) -> list[str]:
    return [m.id for m in broker.outbox]


def make_log(push_id: str, *, node: str = "n1", age_s: float = 60.0, ttl_s: int | None = None,
             status: str = PushStatus.ACCEPTED, now: float = NOW) -> PushLog:
    created = datetime.fromtimestamp(now, tz=UTC) - timedelta(seconds=age_s)
    return PushLog.objects.create(
        id=push_id, status=status, users=["u1"], target_count=1, data_json='{"n":1}',
        accepted_node=node, created_at=created, ttl_s=ttl_s,
        expires_at=created + timedelta(seconds=ttl_s) if ttl_s else None,
    )


async def test_pushes_wait_while_the_broker_is_down_and_go_out_in_order():
    relay, broker, clock = make_relay()
    broker.available = False
    for i in range(3):
        relay.submit(push(f"p{i}"))
    relay.submit(push("p1"))  # a repeat of a pending push is ignored
    assert relay.backlog == 3

    assert await relay.publish_some() is False
    assert await relay.publish_some() is False
    assert [m.id for m in relay.pending] == ["p0", "p1", "p2"]
    assert relay.broker_up is False
    assert broker.outbox == []

    broker.available = True
    clock.now = NOW + 5
    assert await relay.publish_some() is True
    assert relay.broker_up is True
    assert relay.backlog == 0
    assert published_ids(broker) == ["p0", "p1", "p2"]
    # The relay stamps each push with the moment it handed it over.
    assert {m.published_ms for m in broker.outbox} == {int((NOW + 5) * 1000)}
    db = relay.db
    await relay.flush()
    assert db.calls == [("_record_outcomes", (["p0", "p1", "p2"], []))]
    await relay.flush()
    assert len(db.calls) == 1


async def test_publish_some_takes_at_most_a_window():
    relay, broker, _ = make_relay()
    relay.window = 2
    for i in range(5):
        relay.submit(push(f"p{i}"))
    await relay.publish_some()
    assert published_ids(broker) == ["p0", "p1"]
    await relay.publish_some()
    await relay.publish_some()
    assert published_ids(broker) == [f"p{i}" for i in range(5)]


async def test_a_partly_refused_window_keeps_the_refused_in_front_in_order():
    relay, broker, _ = make_relay()
    relay.window = 4
    refuse = {"p1", "p3"}
    original = broker.publish

    async def flaky_publish(message):
        if message.id in refuse:
            raise RuntimeError("boom")
        await original(message)

    broker.publish = flaky_publish
    for i in range(6):
        relay.submit(push(f"p{i}"))
    assert await relay.publish_some() is False
    assert published_ids(broker) == ["p0", "p2"]
    # Ahead of the pushes that were not tried yet, in their order.
    assert [m.id for m in relay.pending] == ["p1", "p3", "p4", "p5"]
    refuse.clear()
    assert await relay.publish_some() is True
    assert published_ids(broker) == ["p0", "p2", "p1", "p3", "p4", "p5"]


class BatchingBroker(LocalBroker):
    """A local broker that, like RocketMQ and Redis, takes several pushes per message."""

    max_batch_pushes = 3

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.messages: list[list[str]] = []  # ids per broker message
        self.refuse: set[str] = set()

    async def publish(self, message) -> None:
        await self.publish_batch([message])

    async def publish_batch(self, pushes) -> None:
        if self.refuse & {p.id for p in pushes}:
            raise BrokerUnavailable("refused")
        raw = encode_batch(pushes) if len(pushes) > 1 else encode(pushes[0])
        self.messages.append([m.id for m in decode_many(raw)])


def batching_relay() -> tuple[Relay, BatchingBroker]:
    broker = BatchingBroker(node_id="n1")
    relay = Relay(broker=broker, db=RecordingDb(), node_id="n1")
    relay.clock = Clock()
    return relay, broker


async def test_pending_pushes_go_out_a_few_per_broker_message_in_order():
    relay, broker = batching_relay()
    for i in range(4):
        relay.submit(push(f"p{i}"))
    relay.submit(control("c1", issued_ms=int(NOW * 1000)))
    for i in range(4, 6):
        relay.submit(push(f"p{i}"))
    assert await relay.publish_some() is True
    assert broker.messages == [["p0", "p1", "p2"], ["p3"], ["c1"], ["p4", "p5"]]
    assert relay.backlog == 0
    assert relay._published == [f"p{i}" for i in range(6)]  # pushes only, each once


async def test_big_pushes_split_broker_messages_by_size(monkeypatch):
    monkeypatch.setattr(relay_module, "MAX_BATCH_BYTES", 3500)  # two pushes fit, not three
    relay, broker = batching_relay()
    for i in range(3):
        relay.submit(dataclasses.replace(push(f"p{i}"), data_json='"' + "x" * 1200 + '"'))
    await relay.publish_some()
    assert broker.messages == [["p0", "p1"], ["p2"]]


async def test_a_refused_broker_message_keeps_all_its_pushes_in_front_in_order():
    relay, broker = batching_relay()
    broker.refuse = {"p4"}
    for i in range(7):
        relay.submit(push(f"p{i}"))
    assert await relay.publish_some() is False
    assert broker.messages == [["p0", "p1", "p2"], ["p6"]]
    assert [m.id for m in relay.pending] == ["p3", "p4", "p5"]
    broker.refuse.clear()
    assert await relay.publish_some() is True
    assert broker.messages[-1] == ["p3", "p4", "p5"]


@pytest.mark.parametrize("error", [RuntimeError("database is locked"), asyncio.CancelledError()])
async def test_outcomes_not_written_are_kept_for_the_next_flush(error):
    calls = []

    async def failing_db(fn, *args):
        calls.append(args)
        if len(calls) == 1:
            raise error

    relay, _, _ = make_relay(failing_db)
    relay.submit(push("p-old", expires_ms=int(NOW * 1000)))
    relay.submit(push("p-1"))
    await relay.publish_some()
    relay.submit(push("p-2"))
    with pytest.raises(type(error)):
        await relay.flush()
    await relay.publish_some()
    await relay.flush()
    assert calls[1] == (["p-1", "p-2"], ["p-old"])
    await relay.flush()
    assert len(calls) == 2


async def test_a_published_push_can_be_submitted_again():
    relay, _broker, _ = make_relay()
    relay.submit(push("p1"))
    await relay.publish_some()
    relay.submit(push("p1"))
    assert relay.backlog == 1


async def test_control_orders_are_dropped_after_their_ttl():
    relay, broker, clock = make_relay()
    broker.available = False
    relay.submit(control("c-old", issued_ms=int(NOW * 1000)))
    relay.submit(control("c-new", issued_ms=int((NOW + 30) * 1000)))
    assert await relay.publish_some() is False
    clock.now = NOW + ControlMessage.ttl_ms / 1000 + 1
    broker.available = True
    assert await relay.publish_some() is True
    assert published_ids(broker) == ["c-new"]
    assert relay.backlog == 0
    # Control orders are not push logs: nothing to record.
    await relay.flush()
    assert relay.db.calls == []
    # Orders are not stamped (they have no published_ms).
    assert isinstance(broker.outbox[0], ControlMessage)


@pytest.mark.django_db(transaction=True)
async def test_a_push_whose_ttl_runs_out_while_down_is_failed():
    expiring = await sync_to_async(make_log)("p-exp", age_s=0, ttl_s=10)
    keeper = await sync_to_async(make_log)("p-keep", age_s=0)
    relay, broker, clock = make_relay(run_db)
    broker.available = False
    relay.submit(push_message(expiring))
    relay.submit(push_message(keeper))
    assert relay.pending[0].expires_ms == int((NOW + 10) * 1000)
    assert await relay.publish_some() is False

    clock.now = NOW + 10
    assert await relay.publish_some() is False
    assert [m.id for m in relay.pending] == ["p-keep"]
    broker.available = True
    assert await relay.publish_some() is True
    await relay.flush()

    assert published_ids(broker) == ["p-keep"]
    expiring = await PushLog.objects.aget(id="p-exp")
    keeper = await PushLog.objects.aget(id="p-keep")
    assert (expiring.status, expiring.error, expiring.published_at) == (
        PushStatus.FAILED, TTL_FAILURE, None)
    assert keeper.status == PushStatus.PUBLISHED
    assert keeper.published_at is not None
    assert keeper.error == ""


async def test_a_push_behind_the_window_also_fails_when_its_ttl_runs_out():
    relay, broker, clock = make_relay()
    relay.window = 2
    broker.available = False
    for i in range(5):
        relay.submit(push(f"p{i}"))
    relay.submit(push("short", expires_ms=int((NOW + 1) * 1000)))
    relay.submit(control("order", issued_ms=int(NOW * 1000)))
    assert await relay.publish_some() is False
    clock.now = NOW + 61  # past the short push's ttl and the order's
    assert await relay.publish_some() is False
    assert [m.id for m in relay.pending] == [f"p{i}" for i in range(5)]
    assert relay._failed == ["short"]
    assert relay.backlog == 5


@pytest.mark.django_db(transaction=True)
async def test_recording_does_not_move_a_push_backwards():
    await sync_to_async(make_log)("p-done", age_s=0, status=PushStatus.DELIVERED)
    relay, _broker, _ = make_relay(run_db)
    relay.submit(push("p-done"))
    await relay.publish_some()
    await relay.flush()
    log = await PushLog.objects.aget(id="p-done")
    assert log.status == PushStatus.DELIVERED
    assert log.published_at is not None


def _cluster() -> None:
    now = datetime.fromtimestamp(NOW, tz=UTC)
    for node_id, age_s in (("n1", 0), ("dead-1", 3600), ("live-1", 1)):
        Node.objects.create(id=node_id, started_at=now - timedelta(days=1),
                            last_seen=now - timedelta(seconds=age_s))
    make_log("own-old", node="n1", age_s=60)
    make_log("own-young", node="n1", age_s=2)
    make_log("dead-old", node="dead-1", age_s=50)
    make_log("live-old", node="live-1", age_s=60)
    make_log("own-published", node="n1", age_s=60, status=PushStatus.PUBLISHED)
    make_log("own-expired", node="n1", age_s=60, ttl_s=30)
    make_log("live-expired", node="live-1", age_s=60, ttl_s=30)


@pytest.mark.django_db(transaction=True)
async def test_recover_picks_up_orphans_of_this_node_and_of_dead_nodes(monkeypatch):
    await sync_to_async(_cluster)()
    monkeypatch.setattr("django.utils.timezone.now",
                        lambda: datetime.fromtimestamp(NOW, tz=UTC))
    relay, broker, _ = make_relay(
        run_db, dead_nodes=functools.partial(dead_node_ids, timeout_s=30, exclude="n1"))
    assert relay.orphan_after_s == 10.0

    await relay.recover()
    assert [m.id for m in relay.pending] == ["own-old", "dead-old"]
    assert all(isinstance(m, PushMessage) for m in relay.pending)
    # A second pass does not queue them twice.
    await relay.recover()
    assert relay.backlog == 2

    statuses = dict(await sync_to_async(list)(PushLog.objects.values_list("id", "status")))
    assert statuses["own-expired"] == PushStatus.FAILED
    assert statuses["live-expired"] == PushStatus.FAILED
    assert statuses["own-young"] == PushStatus.ACCEPTED
    assert statuses["live-old"] == PushStatus.ACCEPTED
    expired = await PushLog.objects.aget(id="own-expired")
    assert expired.error == TTL_FAILURE

    assert await relay.publish_some() is True
    await relay.flush()
    assert published_ids(broker) == ["own-old", "dead-old"]
    await relay.recover()
    assert relay.backlog == 0
    assert (await PushLog.objects.aget(id="dead-old")).status == PushStatus.PUBLISHED


@pytest.mark.django_db(transaction=True)
async def test_recovered_push_carries_its_target_and_expiry():
    await sync_to_async(make_log)("orphan", age_s=60, ttl_s=600)
    relay, _, _ = make_relay(run_db)
    await relay.recover()
    (message,) = relay.pending
    assert message.users == ("u1",)
    assert message.data_json == '{"n":1}'
    assert message.accepted_ms == int((NOW - 60) * 1000)
    assert message.expires_ms == int((NOW - 60 + 600) * 1000)


@pytest.mark.django_db(transaction=True)
async def test_run_retries_through_an_outage_and_threadsafe_submit():
    await sync_to_async(make_log)("p-a", age_s=0)
    await sync_to_async(make_log)("p-b", age_s=0)
    relay, broker, _ = make_relay(run_db)
    relay.retry_delays_s = (0.005,)
    relay.submit_threadsafe(push("ignored"))  # no running relay yet: left for recover()
    assert relay.backlog == 0

    broker.available = False
    task = asyncio.create_task(relay.run())
    try:
        for _ in range(200):
            if relay._loop is not None:
                break
            await asyncio.sleep(0.005)
        await asyncio.to_thread(relay.submit_threadsafe, push("p-a"))
        relay.submit(push("p-b"))
        for _ in range(10):
            await asyncio.sleep(0.01)
        assert broker.outbox == []
        assert relay.backlog == 2

        broker.available = True
        for _ in range(400):
            if relay.backlog == 0 and len(broker.outbox) == 2:
                break
            await asyncio.sleep(0.005)
        assert published_ids(broker) == ["p-a", "p-b"]
        for _ in range(400):
            if await PushLog.objects.filter(status=PushStatus.PUBLISHED).acount() == 2:
                break
            await asyncio.sleep(0.005)
        assert await PushLog.objects.filter(status=PushStatus.PUBLISHED).acount() == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
