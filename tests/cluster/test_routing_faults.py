"""Routed delivery through change and failure (docs/cluster.md, "Routing"): the rolling
upgrade from broadcast to routed, a node SIGKILLed, a node added while pushes flow, and
Redis restarted under a routed cluster. Each ends with every kept push delivered to every
user (clients that reconnect to whichever node is up, acking what they get) and the map
right again within the node timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import signal
import subprocess
from collections.abc import Iterator

import pytest
import websockets

from gateway_core.presence_map import PresenceMap
from tests.support.clients import Api, eventually, make_token, metric, metrics_text, uid, ws_connect
from tests.support.cluster import BROKERS, NODE_TIMEOUT_S, Cluster
from tests.support.gateway import REPO, GatewayProcess
from tests.support.services import redis_url

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

#: Bound for every kept push to reach its user once the changes are over.
SETTLE_S = 30.0


class Fleet:
    """Users whose clients stay connected to a preferred node, or to any node that is up,
    reconnecting when closed (4012 on a drain, a drop on SIGKILL) and acking every push;
    and a pusher of kept pushes to them through any node that is up."""

    def __init__(self, cluster: Cluster, key: str, users: dict[str, str]) -> None:
        self.cluster = cluster
        self.key = key
        self.users = users  # user -> preferred node name
        self.got: dict[str, set[str]] = {u: set() for u in users}
        self.sent: dict[str, set[str]] = {u: set() for u in users}
        self.nodes_seen: dict[str, str] = {}
        self.done = asyncio.Event()
        self.pushing = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.rng = random.Random(16)

    def _order(self, prefer: str) -> list:
        nodes = dict(self.cluster.nodes)
        names = [prefer, *sorted(n for n in nodes if n != prefer)]
        return [nodes[n] for n in names if n in nodes]

    async def _client(self, user: str) -> None:
        while not self.done.is_set():
            ws = None
            for gw in self._order(self.users[user]):
                try:
                    ws = await ws_connect(gw, make_token(user))
                    break
                except Exception:
                    continue
            if ws is None:
                await asyncio.sleep(0.2)
                continue
            try:
                while not self.done.is_set():
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 0.5)
                    except TimeoutError:
                        continue
                    frame = json.loads(raw)
                    if frame["type"] == "welcome":
                        self.nodes_seen[user] = frame["node"]
                    elif frame["type"] == "push":
                        self.got[user].add(frame["id"])
                        await ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
            except websockets.ConnectionClosed:
                await asyncio.sleep(0.1)
            finally:
                with contextlib.suppress(Exception):
                    await ws.close()

    async def _pusher(self) -> None:
        users = list(self.users)
        while not self.done.is_set():
            await self.pushing.wait()
            user = self.rng.choice(users)
            for gw in self._order(self.rng.choice(sorted(self.cluster.nodes) or ["a"])):
                try:
                    async with Api(gw, self.key) as api:
                        response = await api.push(
                            {"users": [user], "data": {"n": len(self.sent[user])}, "ttl": 120},
                            expect=None)
                    if response.status_code == 202:
                        self.sent[user].add(response.json()["id"])
                        break
                except Exception:
                    continue
            await asyncio.sleep(0.03)

    async def __aenter__(self) -> Fleet:
        self.tasks = [asyncio.create_task(self._client(u)) for u in self.users]
        self.tasks.append(asyncio.create_task(self._pusher()))
        self.pushing.set()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.done.set()
        self.pushing.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def missing(self) -> dict[str, int]:
        return {u: len(self.sent[u] - self.got[u]) for u in self.users
                if self.sent[u] - self.got[u]}

    async def all_delivered(self) -> None:
        self.pushing.clear()
        await asyncio.sleep(0.1)

        async def missing() -> dict[str, int]:
            return self.missing()

        await eventually(missing, lambda m: not m, within=SETTLE_S, interval=0.5,
                         what="every kept push delivered to its user")
        assert sum(len(s) for s in self.sent.values()) > 20


async def stop(cluster: Cluster, name: str, sig: int | None = None) -> None:
    await asyncio.to_thread(cluster.stop, name, sig)


async def start(cluster: Cluster, name: str, *, routing: str) -> None:
    await asyncio.to_thread(functools.partial(cluster.start, name, GATEWAY_ROUTING=routing))


async def mode(cluster: Cluster, name: str) -> str:
    gw = cluster.nodes[name]
    text = await metrics_text(gw)
    return "routed" if metric(text, "gateway_routing_mode", node=gw.node_id,
                              mode="routed") == 1 else "broadcast"


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cluster(broker: str, make_cluster) -> Iterator[Cluster]:
    cluster = make_cluster(broker, REDIS_URL=redis_url())
    try:
        yield cluster
    finally:
        cluster.stop_all()


async def test_a_rolling_upgrade_from_broadcast_to_routed_loses_no_push(cluster: Cluster) -> None:
    """docs/cluster.md "Rolling upgrade": every node restarted, one at a time, from
    GATEWAY_ROUTING=broadcast to routed, while kept pushes flow to users on both."""
    await asyncio.to_thread(functools.partial(cluster.start_many, ["a", "b"],
                                              GATEWAY_ROUTING="broadcast"))
    key = cluster.api_key()
    users = {uid("up"): "a" if i % 2 else "b" for i in range(6)}
    async with Fleet(cluster, key, users) as fleet:
        await asyncio.sleep(1.5)
        for name in ("a", "b"):
            await stop(cluster, name)
            await asyncio.sleep(0.5)
            await start(cluster, name, routing="routed")
            await asyncio.sleep(1.5)
        assert [await mode(cluster, n) for n in "ab"] == ["routed", "routed"]
        await asyncio.sleep(1.5)  # routed publishing, users back on their nodes
        await fleet.all_delivered()


async def test_a_node_killed_and_a_node_added_while_pushes_flow(cluster: Cluster) -> None:
    await asyncio.to_thread(functools.partial(cluster.start_many, ["a", "b", "c"],
                                              GATEWAY_ROUTING="routed"))
    key = cluster.api_key()
    users = {uid("k"): "abc"[i % 3] for i in range(6)}
    victim = cluster.nodes["c"].node_id
    async with Fleet(cluster, key, users) as fleet:
        await asyncio.sleep(1.5)
        await stop(cluster, "c", signal.SIGKILL)
        await asyncio.sleep(1.0)
        await start(cluster, "d", routing="routed")
        fleet.users.update({u: "d" for u in list(users)[:2]})  # next reconnects go to d
        await asyncio.sleep(1.5)
        await fleet.all_delivered()
    # The killed node's connections leave the map within the node timeout.
    topic = cluster.env["GATEWAY_ROCKETMQ_TOPIC"]
    reader = PresenceMap(url=redis_url(), node_id="reader", incarnation="x",
                         node_timeout_s=NODE_TIMEOUT_S, topic=topic)
    try:
        async def holders() -> set[str]:
            found, _ = await reader.lookup([("default", u) for u in users])
            return {c.node for conns in found.values() for c in conns}

        await eventually(holders, lambda nodes: victim not in nodes,
                         within=NODE_TIMEOUT_S + 3, what=f"{victim} gone from the map")
    finally:
        await reader.close()


@pytest.mark.serial  # restarts the suite's Redis, empty: every other test's keys go with it
@pytest.mark.parametrize("broker", [pytest.param("rocketmq", marks=pytest.mark.rocketmq)])
async def test_redis_restarted_under_a_routed_cluster(broker: str, make_cluster) -> None:
    """The map is lost with Redis (no persistence): the router broadcasts while a live node
    has no marker, each node re-adds its sessions before its marker comes back, and no
    kept push is lost."""
    cluster = make_cluster(broker, REDIS_URL=redis_url())
    try:
        await asyncio.to_thread(functools.partial(cluster.start_many, ["a", "b"],
                                                  GATEWAY_ROUTING="routed"))
        key = cluster.api_key()
        users = {uid("rr"): "ab"[i % 2] for i in range(4)}
        async with Fleet(cluster, key, users) as fleet:
            await asyncio.sleep(1.5)
            await asyncio.to_thread(restart_redis)
            # Every node re-adds its sessions: the map holds the four clients again.
            for name in "ab":
                await map_refilled(cluster.nodes[name], at_least=4)
            await asyncio.sleep(1.5)  # routed again, pushes still flowing
            await fleet.all_delivered()
    finally:
        cluster.stop_all()


async def map_refilled(gw: GatewayProcess, *, at_least: int) -> None:
    async def size() -> float:
        return metric(await metrics_text(gw), "gateway_presence_map_connections",
                      node=gw.node_id)

    await eventually(size, lambda n: n >= at_least, within=NODE_TIMEOUT_S,
                     what="the map refilled")


def restart_redis() -> None:
    url = redis_url()
    port = url.rsplit(":", 1)[1].split("/")[0]
    subprocess.run(["redis-cli", "-p", port, "shutdown", "nosave"], check=False,
                   capture_output=True, timeout=30)
    started = subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), "start", "redis"],
                             check=False, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
