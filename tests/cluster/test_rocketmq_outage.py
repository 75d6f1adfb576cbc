"""RocketMQ goes away and comes back (PROTOCOL.md section 2: an accepted push is never
silently lost). ``scripts/rocketmq.sh start`` wipes the store and re-creates the topic, so
the nodes' producers, consumers and consumer groups all start over on a new broker.

This module stops the shared RocketMQ: it is ``serial`` (run alone, after every other test),
and ``rocketmq_restored`` starts RocketMQ again whatever happens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.cluster import flows
from tests.support.clients import Api, eventually, recv_push, uid
from tests.support.cluster import Cluster, rocketmq_running, rocketmq_script
from tests.support.services import redis_url

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.rocketmq, pytest.mark.serial]

#: After ``rocketmq.sh start`` returns: how long the pushes kept through the outage may take
#: to arrive (relay back-off, new routes, consumers rebuilt on the new broker).
RESUME_S = 60.0


@pytest.fixture(scope="module", params=["broadcast", "routed"])
def cluster(request: pytest.FixtureRequest, make_cluster) -> Iterator[Cluster]:
    # Clients stay silent through a minute-long outage: no heartbeat closes here. Routed:
    # the pushes go to each node's own tag, which the rebuilt consumers subscribe to again.
    routed = {"REDIS_URL": redis_url(), "GATEWAY_ROUTING": "routed"}
    cluster = make_cluster("rocketmq", GATEWAY_HEARTBEAT_TIMEOUT="600",
                           **(routed if request.param == "routed" else {}))
    try:
        cluster.start_many(["a", "b"])
        yield cluster
    finally:
        cluster.stop_all()


async def readyz(url: str) -> tuple[int, dict]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        response = await http.get(f"{url}/readyz")
    return response.status_code, response.json()


async def test_pushes_accepted_while_rocketmq_is_down_arrive_after_it_is_back(
    cluster: Cluster, rocketmq_restored: None
) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    key = cluster.api_key()
    user = uid("outage")
    clients = flows.Clients()
    try:
        on_a, _ = await clients.connect(a, user)
        on_b, _ = await clients.connect(b, user)
        async with Api(a, key) as api:
            # The path works before the outage.
            before = await api.push_to([user], flows.data("before"))
            for ws in (on_a, on_b):
                assert (await recv_push(ws, within=flows.CROSS_S))["id"] == before

            stopped = await asyncio.to_thread(rocketmq_script, "stop", 120)
            assert stopped.returncode == 0, stopped.stderr
            assert not rocketmq_running()

            _, body = await eventually(
                lambda: readyz(a.url), lambda r: r[0] == 503, within=10,
                what="/readyz 503 while RocketMQ is down",
            )
            assert body["status"] == "unavailable", body
            assert body["checks"]["broker"] != "ok", body
            assert "rocketmq" in body["checks"]["broker"], body
            assert body["checks"]["database"] == "ok", body

            ids = []
            for i in range(4):
                response = await api.push({"users": [user], "data": flows.data(f"down {i}")})
                accepted = response.json()
                assert accepted["status"] == "accepted", accepted
                ids.append(accepted["id"])
            for push_id in ids:
                assert (await api.get_push(push_id))["status"] == "accepted"

            started = await asyncio.to_thread(rocketmq_script, "start", 180)
            assert started.returncode == 0, started.stderr
            back = time.monotonic()

            for ws in (on_a, on_b):
                got = set()
                while got != set(ids):
                    left = RESUME_S - (time.monotonic() - back)
                    frame = await recv_push(ws, within=max(left, 0.1))
                    assert frame["id"] in ids, frame
                    assert frame["id"] not in got, f"push {frame['id']} came twice"
                    got.add(frame["id"])
            resumed_after = time.monotonic() - back
            for push_id in ids:
                await flows.wait_push_totals(api, push_id, delivered=2)
            for gw in (a, b):
                await eventually(lambda gw=gw: readyz(gw.url), lambda r: r[0] == 200,
                                 within=30, what=f"{gw.node_id} ready again")
            # New pushes flow normally.
            after = await api.push_to([user], flows.data("after"))
            for ws in (on_a, on_b):
                assert (await recv_push(ws, within=flows.CROSS_S))["id"] == after
            print(f"pushes resumed {resumed_after:.1f} s after RocketMQ was back")
    finally:
        await clients.close()
