"""Routed delivery on real services (docs/cluster.md, "Routing"): the presence map in Redis,
three routed nodes on each broker (a targeted push read only by the nodes holding its
users), the register-before-replay race, and the cluster-wide per-user cap.

The rolling upgrade and the faults are in tests/cluster/test_routing_faults.py.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from gateway_core.presence_map import LocalSession, PresenceMap
from tests.cluster.flows import Clients
from tests.support.clients import (
    Api,
    eventually,
    make_token,
    metric,
    metrics_text,
    ping,
    recv_json,
    recv_push,
    uid,
    wait_closed,
    ws_connect,
)
from tests.support.cluster import BROKERS, Cluster
from tests.support.gateway import GatewayProcess
from tests.support.services import redis_url

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

#: GATEWAY_MAX_CONNECTIONS_PER_USER_CLUSTER of the routed cluster.
CLUSTER_CAP = 2


# --- the map itself -------------------------------------------------------------------

class Maps:
    """Presence maps of one throwaway topic in the suite's Redis, closed and their keys
    deleted at the end."""

    def __init__(self) -> None:
        self.topic = f"map-{uuid.uuid4().hex[:8]}"
        self.client = aioredis.Redis.from_url(redis_url())
        self.made: list[PresenceMap] = []

    def make(self, node_id: str, incarnation: str = "i1") -> PresenceMap:
        self.made.append(PresenceMap(url=redis_url(), node_id=node_id,
                                     incarnation=incarnation, node_timeout_s=30,
                                     topic=self.topic))
        return self.made[-1]

    async def aclose(self) -> None:
        keys = [k async for k in self.client.scan_iter(
            match=f"gateway:presence:{self.topic}:*")]
        if keys:
            await self.client.delete(*keys)
        await self.client.aclose()
        for m in self.made:
            await m.close()


@pytest.fixture
async def maps() -> AsyncIterator[Maps]:
    found = Maps()
    yield found
    await found.aclose()


async def test_the_presence_map_in_redis(maps: Maps) -> None:
    client = maps.client
    one, two = maps.make("n1"), maps.make("n2")
    held_by_one = [LocalSession("default", "u1", "s1", 1.0)]
    await one.beat(lambda: held_by_one)
    await two.beat(lambda: [])
    await two.add(app="default", user="u1", session_id="s2", connected_at=2.0)
    await two.add(app="shop", user="u1", session_id="s3", connected_at=3.0)
    found, markers = await one.lookup([("default", "u1"), ("default", "u2")])
    assert [(c.node, c.session_id) for c in found[("default", "u1")]] == [
        ("n1", "s1"), ("n2", "s2")]
    assert found[("default", "u2")] == []
    assert markers == {"n1": {"i1"}, "n2": {"i1"}}
    # What routing reads: the holding nodes only, in one round trip.
    held, _ = await one.holders([("default", "u1"), ("shop", "u1"), ("default", "u2")],
                                also_nodes=["n1"])
    assert held == {("default", "u1"): {"n1", "n2"}, ("shop", "u1"): {"n2"},
                    ("default", "u2"): set()}
    assert await one.cluster_size() == 1  # n2's marker counts at its next beat
    await two.beat(lambda: [LocalSession("default", "u1", "s2", 2.0),
                            LocalSession("shop", "u1", "s3", 3.0)])
    assert await one.cluster_size() == 3

    # A removal is queued, written with the next flush (or beat).
    two.remove(app="default", user="u1", session_id="s2")
    await two.flush()
    assert [c.session_id for c in await one.connections("default", "u1")] == ["s1"]

    # n2 dies: once its marker is gone, its connections are gone from lookups (and
    # removed from Redis by the lookup that met them).
    await client.delete(two.keys.node("n2"))
    assert (await one.holders([("shop", "u1")]))[0] == {("shop", "u1"): set()}
    assert await one.connections("shop", "u1") == []
    assert await client.zcard(two.keys.user("shop", "u1")) == 0

    # A second process of n1 (a split node's other web process): both count.
    other = maps.make("n1", "i2")
    await other.beat(lambda: [LocalSession("default", "u1", "s9", 9.0)])
    await other.add(app="default", user="u1", session_id="s9", connected_at=9.0)
    assert [c.session_id for c in await one.connections("default", "u1")] == ["s1", "s9"]
    # A process that stops beating counts no more past the node timeout (a reader whose
    # clock is 31 s ahead); one that stops cleanly, at once.
    ahead = maps.make("reader", "x")
    ahead.clock = lambda: time.time() + 31
    assert await ahead.markers(["n1"]) == {}
    await ahead.close()
    await other.leave()
    await other.close()
    assert [c.session_id for c in await one.connections("default", "u1")] == ["s1"]

    # Redis loses everything (a restart without persistence): the node's next beat
    # re-adds every session it holds before its marker comes back.
    await client.delete(*[k async for k in client.scan_iter(match=f"{one.keys.prefix}*")])
    assert (await one.lookup([], also_nodes=["n1"]))[1] == {}
    await one.beat(lambda: held_by_one)
    assert [c.session_id for c in await one.connections("default", "u1")] == ["s1"]


async def test_a_storm_of_adds_is_held_and_an_incomplete_marker_is_no_marker(maps: Maps) -> None:
    node, reader = maps.make("n1"), maps.make("r")
    await node.beat(lambda: [])
    # 2,000 sessions connecting at once: one connection each from redis-py's pool
    # (at most 100) refused most of them; together in pipelines, every one is held.
    await asyncio.gather(*(node.add(app="default", user=f"u{i}", session_id=f"s{i}",
                                    connected_at=float(i)) for i in range(2000)))
    held, markers = await reader.holders([("default", f"u{i}") for i in range(2000)],
                                         also_nodes=["n1"])
    assert all(nodes == {"n1"} for nodes in held.values()) and markers == {"n1": {"i1"}}
    # A failed add marks the marker incomplete: readers see the node as unmarked (the
    # router then broadcasts) until its next beat re-adds everything.
    await node.mark_incomplete()
    assert (await reader.holders([], also_nodes=["n1"]))[1] == {}
    assert node.dirty
    # Its entries are still live: a lookup meeting them keeps them (were they taken for a
    # dead node's and removed, a complete marker would soon vouch for a map missing them).
    found, _ = await reader.lookup([("default", "u7")])
    assert [c.session_id for c in found[("default", "u7")]] == ["s7"]
    assert await maps.client.zcard(node.keys.user("default", "u7")) == 1
    await node.beat(lambda: [LocalSession("default", "u1", "s1", 1.0)])
    assert (await reader.holders([], also_nodes=["n1"]))[1] == {"n1": {"i1"}}


# --- three routed nodes -----------------------------------------------------------------

@pytest.fixture(scope="module", params=BROKERS)
def routed(request: pytest.FixtureRequest, make_cluster) -> Iterator[Cluster]:
    cluster = make_cluster(request.param, REDIS_URL=redis_url(), GATEWAY_ROUTING="routed",
                           GATEWAY_MAX_CONNECTIONS_PER_USER_CLUSTER=str(CLUSTER_CAP))
    try:
        cluster.start_many(["a", "b", "c"])
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def key(routed: Cluster) -> str:
    return routed.api_key()


async def consumed(gw: GatewayProcess) -> float:
    return metric(await metrics_text(gw), "gateway_messages_consumed_total",
                  node=gw.node_id, kind="push")


async def test_a_targeted_push_is_read_only_by_the_nodes_holding_its_users(
        routed: Cluster, key: str) -> None:
    a, b, c = (routed.nodes[n] for n in "abc")
    on_a, on_b = uid("ra"), uid("rb")
    clients = Clients()
    try:
        ws_a, _ = await clients.connect(a, on_a)
        ws_b, _ = await clients.connect(b, on_b)
        before = {n: await consumed(routed.nodes[n]) for n in "abc"}
        async with Api(c, key) as api:
            to_a = [await api.push_to([on_a], {"i": i}) for i in range(10)]
            to_b = [await api.push_to([on_b], {"i": i}) for i in range(10)]
            to_both = await api.push_to([on_a, on_b], {"both": True})
            for _ in range(5):
                await api.push_to([uid("nobody")], {"lost": "never published"})
        # RocketMQ keeps no order across its queues: compared as sets.
        assert {(await recv_push(ws_a, 10))["id"] for _ in range(11)} == {*to_a, to_both}
        assert {(await recv_push(ws_b, 10))["id"] for _ in range(11)} == {*to_b, to_both}
        after = {n: await consumed(routed.nodes[n]) for n in "abc"}
        read = {n: after[n] - before[n] for n in "abc"}
        # At least once: a redelivery may add one; never another node's pushes.
        assert 11 <= read["a"] <= 13 and 11 <= read["b"] <= 13, read
        assert read["c"] == 0, read
        text = await metrics_text(c)
        assert metric(text, "gateway_pushes_routed_total", node=c.node_id, to=a.node_id) >= 11
        assert metric(text, "gateway_routing_total", node=c.node_id, how="unheld") >= 5
        assert metric(text, "gateway_routing_total", node=c.node_id, how="fallback") == 0
        await eventually(  # read at each beat (every second)
            lambda: metrics_text(c),
            lambda t: metric(t, "gateway_presence_map_connections", node=c.node_id) >= 2,
            what="the map's size on c counts a's and b's clients")
        assert metric(text, "gateway_routing_mode", node=c.node_id, mode="routed") == 1
    finally:
        await clients.close()


async def test_a_broadcast_still_reaches_every_node(routed: Cluster, key: str) -> None:
    clients = Clients()
    try:
        sockets = [(await clients.connect(routed.nodes[n], uid("bc")))[0] for n in "abc"]
        async with Api(routed.nodes["a"], key) as api:
            response = await api.push({"broadcast": True, "data": {"all": 1}})
        push_id = response.json()["id"]
        for ws in sockets:
            assert (await recv_push(ws, 10))["id"] == push_id
    finally:
        await clients.close()


async def test_a_kept_push_racing_a_connection_is_never_lost(routed: Cluster, key: str) -> None:
    """The user connects to b while the push is accepted by a: the session is in the map
    before its replay reads the inbox, so the push is in the replay or routed to b."""
    a, b = routed.nodes["a"], routed.nodes["b"]
    rng = random.Random(16)

    async def one(api: Api, i: int) -> None:
        user = uid(f"race{i}")

        async def connect() -> list[str]:
            await asyncio.sleep(rng.uniform(0, 0.05))
            ws = await ws_connect(b, make_token(user))
            try:
                assert (await recv_json(ws, 10))["type"] == "welcome"
                return [(await recv_push(ws, 10))["id"]]
            finally:
                await ws.close()

        async def push() -> str:
            await asyncio.sleep(rng.uniform(0, 0.05))
            return await api.push_to([user], {"race": i}, ttl=60)

        got, push_id = await asyncio.gather(connect(), push())
        assert got == [push_id]

    async with Api(a, key) as api:
        for start in range(0, 60, 20):
            await asyncio.gather(*(one(api, i) for i in range(start, start + 20)))


async def test_the_cluster_cap_closes_the_oldest_connection_on_another_node(
        routed: Cluster) -> None:
    a, b, c = (routed.nodes[n] for n in "abc")
    user = uid("cap")
    clients = Clients()
    try:
        oldest, _ = await clients.connect(b, user)
        second, _ = await clients.connect(a, user)
        await ping(oldest)
        newest, _ = await clients.connect(c, user)
        code, _ = await wait_closed(oldest, 10)
        assert code == 4009
        await ping(second)
        await ping(newest)
        # Still two: a fourth closes the second (on a), the oldest left.
        await clients.connect(b, user)
        code, _ = await wait_closed(second, 10)
        assert code == 4009
        await ping(newest)
    finally:
        await clients.close()
