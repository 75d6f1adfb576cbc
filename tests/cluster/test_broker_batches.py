"""Pushes published as one broker message (``publish_batch``) through the real brokers:
every push comes out of the consumer side, in order, each decoded on its own."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from gateway_core.brokers.base import BaseBroker
from gateway_core.brokers.redis import RedisBroker
from gateway_core.brokers.rocketmq import RocketMQBroker
from gateway_core.messages import PushMessage, decode_many
from tests.support.services import redis_url, rocketmq_endpoint


def pushes(count: int) -> list[PushMessage]:
    run = uuid.uuid4().hex[:8]
    return [PushMessage(id=f"{run}-{i}", users=(f"u{i}",), data_json=f'{{"n":{i}}}',
                        topic=None, accepted_ms=1, published_ms=2) for i in range(count)]


async def round_trip(broker: BaseBroker) -> None:
    batch, single = pushes(3), pushes(1)
    wanted = {p.id for p in batch + single}
    got: list[PushMessage] = []
    raw_messages: list[bytes] = []
    all_four = asyncio.Event()

    async def handler(raw: bytes) -> None:
        decoded = [m for m in decode_many(raw) if m.id in wanted]  # history of other runs
        if decoded:
            raw_messages.append(raw)
        got.extend(m for m in decoded if isinstance(m, PushMessage))
        if len(got) >= 4:
            all_four.set()

    consuming = asyncio.create_task(broker.consume(handler))
    try:
        async with asyncio.timeout(60):
            while not broker.consuming:  # noqa: ASYNC110 (a flag the broker sets)
                await asyncio.sleep(0.05)
            await broker.publish_batch(batch)
            await broker.publish_batch(single)
            await all_four.wait()
    finally:
        consuming.cancel()
        # As Node.stop does: redis-py can hold a cancelled XREAD until the client closes.
        await asyncio.wait({consuming}, timeout=2)
        await broker.close()
        await asyncio.gather(consuming, return_exceptions=True)
    in_batch = {p.id for p in batch}
    # One broker message keeps its pushes' order (two messages may arrive either way).
    assert [p.id for p in got if p.id in in_batch] == [p.id for p in batch]
    assert {p.id for p in got} == wanted and len(got) == 4  # nothing twice
    assert got[0].data_json == '{"n":0}' and got[0].users == ("u0",)
    assert len(raw_messages) == 2  # three pushes in one broker message, one in another


@pytest.mark.redis
async def test_a_batch_crosses_redis_as_one_stream_entry() -> None:
    broker = RedisBroker(node_id="batch-test", config={
        "redis_url": redis_url(), "topic": f"batch-{uuid.uuid4().hex[:8]}"})
    assert broker.max_batch_pushes > 1
    await round_trip(broker)


@pytest.mark.rocketmq
async def test_a_batch_crosses_rocketmq_as_one_message() -> None:
    broker = RocketMQBroker(node_id=f"batch-test-{uuid.uuid4().hex[:8]}",
                            config={"endpoint": rocketmq_endpoint()})
    assert broker.max_batch_pushes > 1
    await round_trip(broker)
