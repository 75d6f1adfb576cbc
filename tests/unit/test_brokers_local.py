from __future__ import annotations

import asyncio

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from gateway_core.brokers import BACKENDS, BaseBroker, BrokerUnavailable, create_broker
from gateway_core.brokers.local import LocalBroker
from gateway_core.messages import Message, PushMessage


def push(push_id: str) -> PushMessage:
    return PushMessage(id=push_id, users=None, data_json="1", topic=None, accepted_ms=1)


async def test_publish_keeps_an_outbox():
    broker = LocalBroker(node_id="n1")
    await broker.publish(push("p1"))
    await broker.publish(push("p2"))
    assert broker.outbox == [push("p1"), push("p2")]


async def test_outbox_keeps_the_last_thousand():
    broker = LocalBroker(node_id="n1")
    for i in range(1005):
        await broker.publish(push(f"p{i}"))
    assert len(broker.outbox) == 1000
    assert broker.outbox[0].id == "p5"
    assert broker.outbox[-1].id == "p1004"


async def test_outage_refuses_publish_and_check():
    broker = LocalBroker(node_id="n1")
    await broker.check()
    broker.available = False
    with pytest.raises(BrokerUnavailable):
        await broker.publish(push("p1"))
    with pytest.raises(BrokerUnavailable):
        await broker.check()
    assert broker.outbox == []


async def test_every_consumer_gets_every_message_once_in_order():
    broker = LocalBroker(node_id="n1")
    got: dict[str, list[str]] = {"a": [], "b": []}

    def handler(name):
        async def handle(message: Message) -> None:
            got[name].append(message.id)
        return handle

    tasks = [asyncio.create_task(broker.consume(handler(name))) for name in got]
    await asyncio.sleep(0)
    try:
        for i in range(5):
            await broker.publish(push(f"p{i}"))
        for _ in range(100):
            if all(len(ids) == 5 for ids in got.values()):
                break
            await asyncio.sleep(0.001)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    expected = [f"p{i}" for i in range(5)]
    assert got == {"a": expected, "b": expected}
    assert broker._queues == []  # consumers unsubscribe when cancelled


async def test_messages_published_before_consuming_are_not_replayed():
    broker = LocalBroker(node_id="n1")
    await broker.publish(push("before"))
    got: list[Message] = []

    async def handle(message: Message) -> None:
        got.append(message)

    task = asyncio.create_task(broker.consume(handle))
    await asyncio.sleep(0)
    await broker.publish(push("after"))
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [m.id for m in got] == ["after"]


def test_create_broker_by_name():
    broker = create_broker("local", node_id="nx")
    assert isinstance(broker, LocalBroker)
    assert broker.node_id == "nx"
    assert broker.name == "local"
    with override_settings(GATEWAY_BROKER="local", GATEWAY_NODE_ID="from-settings"):
        default = create_broker()
    assert isinstance(default, LocalBroker)
    assert default.node_id == "from-settings"


def test_create_broker_unknown_name_names_it():
    with pytest.raises(ImproperlyConfigured, match="'carrier-pigeon'"):
        create_broker("carrier-pigeon")
    assert set(BACKENDS) == {"local", "rocketmq", "redis"}


async def test_base_broker_says_what_is_missing():
    base = BaseBroker(node_id="n1")
    assert base.config == {}
    with pytest.raises(NotImplementedError, match="publish"):
        await base.publish(push("p"))
    with pytest.raises(NotImplementedError, match="consume"):
        await base.consume(lambda raw: None)
    with pytest.raises(NotImplementedError, match="check"):
        await base.check()
