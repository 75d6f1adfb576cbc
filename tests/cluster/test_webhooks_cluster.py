"""Webhooks on a cluster (PROTOCOL.md section 7): two nodes on one PostgreSQL and one broker
(RocketMQ and Redis), one local receiver.

- A user who opens sessions on both nodes at once gets exactly one ``user.online``, and
  leaving both, exactly one ``user.offline``: both nodes scan, one claims each transition.
- Every delivery is sent by one node: with both nodes sending, each event arrives once
  (the receiver answers 200 at once, so at-least-once never needs a second call here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.clients import Api, eventually, session, uid
from tests.support.cluster import BROKERS, Cluster
from tests.support.receiver import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ENV = {"GATEWAY_WEBHOOK_ALLOW_PRIVATE": "1", "GATEWAY_PRESENCE_DEBOUNCE": "1"}


@pytest.fixture(scope="module", params=BROKERS)
def cluster(request: pytest.FixtureRequest, make_cluster: Any) -> Iterator[Cluster]:
    built = make_cluster(request.param, **ENV)
    built.start_many(["a", "b"])
    yield built
    built.stop_all()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


async def register(cluster: Cluster, receiver: Receiver, path: str) -> dict[str, Any]:
    async with Api(cluster.nodes["a"], cluster.api_key()) as api:
        response = await api.http.post("/api/v1/webhooks", json={
            "url": receiver.url(path), "events": ["user.online", "user.offline"]})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_one_online_and_one_offline_for_sessions_on_two_nodes(
        cluster: Cluster, receiver: Receiver) -> None:
    path = f"/{uid('c')}"
    endpoint = await register(cluster, receiver, path)
    user = uid()

    async def of_user() -> list[str]:
        return [c.event["type"] for c in receiver.calls_to(path)
                if c.event["data"]["user"] == user]

    async with session(cluster.nodes["a"], user), session(cluster.nodes["b"], user):
        await eventually(of_user, lambda got: got == ["user.online"], within=15,
                         what="user.online")
        await asyncio.sleep(3)  # both nodes scanned several times: nothing more
        assert await of_user() == ["user.online"]
    await eventually(of_user, lambda got: got == ["user.online", "user.offline"], within=15,
                     what="user.offline")
    await asyncio.sleep(3)
    assert await of_user() == ["user.online", "user.offline"]
    calls = [c for c in receiver.calls_to(path) if c.event["data"]["user"] == user]
    assert all(c.verified(endpoint["secret"]) for c in calls)
    # The sessions live when the transition was claimed: the second node's session may be
    # recorded a beat later.
    assert calls[0].event["data"]["sessions"] in (1, 2)


async def test_both_nodes_send_and_no_event_arrives_twice(cluster: Cluster,
                                                          receiver: Receiver) -> None:
    path = f"/{uid('m')}"
    await register(cluster, receiver, path)
    users = [uid() for _ in range(30)]
    for i, user in enumerate(users):
        async with session(cluster.nodes["ab"[i % 2]], user):
            pass

    async def got() -> list[str]:
        return [c.event["id"] for c in receiver.calls_to(path)
                if c.event["data"]["user"] in users]

    await eventually(got, lambda ids: len(ids) >= 60, within=30, what="60 events")
    await asyncio.sleep(2)
    ids = await got()
    assert len(ids) == len(set(ids)) == 60

