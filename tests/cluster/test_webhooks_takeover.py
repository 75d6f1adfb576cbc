"""A node SIGKILLed while it holds webhook deliveries (PROTOCOL.md section 7): another node
sends them once their lease runs out. A module of its own: its database has no other
cluster's nodes, which would take the deliveries first."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from tests.support.clients import Api, eventually, session, uid
from tests.support.cluster import BROKERS
from tests.support.receiver import Call, Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ENV = {"GATEWAY_WEBHOOK_ALLOW_PRIVATE": "1", "GATEWAY_PRESENCE_DEBOUNCE": "1",
       "GATEWAY_WEBHOOK_LEASE": "15"}


@pytest.mark.parametrize("broker", BROKERS)
async def test_a_killed_nodes_deliveries_are_sent_by_another(make_cluster: Any,
                                                             broker: str) -> None:
    cluster = make_cluster(broker, **ENV)
    with Receiver() as receiver:
        receiver.hang("/k")  # a's calls stay in flight: a holds their leases
        cluster.start("a")
        async with Api(cluster.nodes["a"], cluster.api_key()) as api:
            response = await api.http.post("/api/v1/webhooks", json={
                "url": receiver.url("/k"), "events": ["user.online", "user.offline"]})
        assert response.status_code == 201, response.text
        secret = response.json()["secret"]
        user = uid()

        async def held() -> list[Call]:
            return receiver.calls_to("/k")

        async with session(cluster.nodes["a"], user):
            await eventually(held, lambda calls: len(calls) >= 1, within=15,
                             what="a's call in flight")
        cluster.stop("a", signal.SIGKILL)
        receiver._hung.clear()  # the receiver answers again
        seen = len(receiver.calls_to("/k"))
        started = time.monotonic()
        cluster.start("b")

        async def after_kill() -> list[Call]:
            return receiver.calls_to("/k")[seen:]

        got = await eventually(after_kill, lambda calls: any(
            c.event["type"] == "user.online" for c in calls), within=45,
            what="b sends the user.online that a held")
        online = next(c for c in got if c.event["type"] == "user.online")
        assert online.verified(secret) and online.event["data"]["user"] == user
        # Not before a's lease ran out (15 s from a's claim), not long after.
        assert time.monotonic() - started < 45
    cluster.stop_all()
