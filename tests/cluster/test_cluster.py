"""Three ``rungateway`` nodes on one broker and one PostgreSQL (PROTOCOL.md section 5:
every node consumes every push and delivers to the sessions it holds), for each broker.

Nodes A, B and C run for the whole module (per broker); the tests run in file order, each
with users of its own and every client closed at its end.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import websockets

from tests.cluster import flows
from tests.support.clients import (
    Api,
    eventually,
    make_token,
    recv_json,
    recv_push,
    uid,
    wait_closed,
    ws_connect,
)
from tests.support.cluster import BROKERS, NODE_TIMEOUT_S, Cluster, stream_key
from tests.support.gateway import GatewayProcess

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

MALFORMED_LOG = "skipped a malformed broker message"


@pytest.fixture(scope="module", params=BROKERS)
def cluster(request: pytest.FixtureRequest, make_cluster) -> Iterator[Cluster]:
    """Nodes A, B and C, ready (their broker consumers receive), on ``request.param``."""
    cluster = make_cluster(request.param)
    try:
        cluster.start_many(["a", "b", "c"])
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def key(cluster: Cluster) -> str:
    return cluster.api_key()


def node(cluster: Cluster, name: str) -> GatewayProcess:
    return cluster.nodes[name]


async def test_broadcast_reaches_all_three_nodes_exactly_once(cluster: Cluster,
                                                              key: str) -> None:
    a, b, c = (node(cluster, n) for n in "abc")
    await flows.broadcast_exactly_once(key, a, [a, b, c])


async def test_push_posted_to_a_reaches_a_client_on_c(cluster: Cluster, key: str) -> None:
    await flows.push_crosses_nodes(key, node(cluster, "a"), node(cluster, "c"))


async def test_user_on_a_and_b_gets_the_push_on_both(cluster: Cluster, key: str) -> None:
    a, b, c = (node(cluster, n) for n in "abc")
    await flows.user_on_two_nodes(key, publisher=a, first=a, second=b, asker=c)


async def test_disconnect_via_a_closes_the_connections_on_b(cluster: Cluster,
                                                            key: str) -> None:
    await flows.disconnect_crosses_nodes(key, node(cluster, "a"), node(cluster, "b"))


async def _publish_malformed(cluster: Cluster, body: bytes) -> None:
    """Put ``body`` on the broker the way a foreign publisher would, past the relay."""
    if cluster.broker == "rocketmq":
        from rocketmq import ClientConfiguration, Credentials, Message, Producer

        def send() -> None:
            topic = cluster.env["GATEWAY_ROCKETMQ_TOPIC"]
            producer = Producer(
                ClientConfiguration(cluster.env["GATEWAY_ROCKETMQ_ENDPOINT"], Credentials()),
                (topic,),
            )
            producer.startup()
            try:
                message = Message()
                message.topic = topic
                message.body = body
                message.tag = "push"
                producer.send(message)
            finally:
                producer.shutdown()

        await asyncio.wait_for(asyncio.to_thread(send), 30)
    else:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(cluster.env["REDIS_URL"], socket_timeout=5)
        try:
            await client.xadd(stream_key(cluster), {"m": body, "tag": "push"})
        finally:
            await client.aclose()


async def test_malformed_broker_message_is_skipped_and_delivery_goes_on(
    cluster: Cluster, key: str
) -> None:
    nodes = [node(cluster, n) for n in "abc"]
    marker = uuid.uuid4().hex
    await _publish_malformed(cluster, f"not json {marker}".encode())

    async def logged() -> list[str]:
        return [gw.node_id for gw in nodes
                if any(MALFORMED_LOG in line and marker in line
                       for line in gw.log().splitlines())]

    await eventually(logged, lambda found: len(found) == len(nodes), within=flows.CROSS_S,
                     interval=0.2, what="every node logged the malformed message")
    # Every consumer still delivers: one client per node gets a later push.
    users = [uid("after-bad") for _ in nodes]
    clients = flows.Clients()
    try:
        sockets = [(await clients.connect(gw, user))[0]
                   for gw, user in zip(nodes, users, strict=True)]
        async with Api(nodes[0], key) as api:
            push_id = await api.push_to(users, flows.data("after malformed"))
            for ws in sockets:
                assert (await recv_push(ws, within=flows.CROSS_S))["id"] == push_id
            await flows.wait_push_totals(api, push_id, delivered=len(nodes))
    finally:
        await clients.close()
    for gw in nodes:
        assert all(p.poll() is None for p in gw.procs), f"{gw.node_id} died"


async def test_killed_node_clients_move_and_its_sessions_vanish(cluster: Cluster,
                                                                key: str) -> None:
    """SIGKILL a node: its client reconnects to another node and gets later pushes; its
    sessions leave presence (asked on a live node) within the node timeout plus a margin."""
    a, b, c = (node(cluster, n) for n in "abc")
    doomed = cluster.start("d")
    user = uid("moving")
    clients = flows.Clients()
    try:
        async with Api(c, key) as api:
            ws, welcome = await clients.connect(doomed, user)
            await eventually(
                lambda: api.presence(user),
                lambda p: [x["node"] for x in p["connections"]] == [doomed.node_id],
                within=flows.DB_S, what=f"{user} present on {doomed.node_id}",
            )
            cluster.stop("d", signal.SIGKILL)
            killed_at = time.monotonic()
            code, _ = await wait_closed(ws, within=5)
            assert code == 1006, code  # no close frame from a killed process

            moved, moved_welcome = await clients.connect(a, user)
            push_id = await api.push_to([user], flows.data("after the kill"))  # POSTed to C
            frame = await recv_push(moved, within=flows.CROSS_S)
            assert frame["id"] == push_id, frame

            margin = 5
            presence = await eventually(
                lambda: api.presence(user),
                lambda p: [x["session"] for x in p["connections"]] == [moved_welcome["session"]],
                within=NODE_TIMEOUT_S + margin, interval=0.25,
                what=f"only the session on {a.node_id} left in presence",
            )
            assert presence["connections"][0]["node"] == a.node_id, presence
            assert welcome["session"] not in str(presence)
            assert time.monotonic() - killed_at <= NODE_TIMEOUT_S + margin
            # The live nodes agree.
            async with Api(b, key) as b_api:
                seen = await b_api.presence(user)
                assert [x["session"] for x in seen["connections"]] == [moved_welcome["session"]]
    finally:
        await clients.close()


# --- Apps (PROTOCOL.md section 9) ----------------------------------------------------------

def _app_token(user: str, app: str, secret: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 600}, secret, algorithm="HS256",
                      headers={"kid": app})


async def _app_session(gw: GatewayProcess, token: str) -> Any:
    ws = await ws_connect(gw, token)
    welcome = await recv_json(ws)
    assert welcome["type"] == "welcome", welcome
    return ws


async def test_two_apps_with_the_same_user_id_stay_apart_across_nodes(cluster: Cluster) -> None:
    """``u`` of shop on A and ``u`` of bank on B: pushes, broadcasts and disconnects sent
    through C reach the right app's user on the right node only."""
    a, b, c = (node(cluster, n) for n in "abc")
    apps = {}
    for name in ("shop", "bank"):
        app = f"{name}-{cluster.run_id}"
        secret = cluster.manage("createapp", app).splitlines()[-1]
        key = cluster.manage("createapikey", f"{app}-key", "--app", app).strip()
        apps[name] = (app, secret, key)
    user = uid()
    shop_ws = await _app_session(a, _app_token(user, apps["shop"][0], apps["shop"][1]))
    bank_ws = await _app_session(b, _app_token(user, apps["bank"][0], apps["bank"][1]))
    try:
        async with Api(c, apps["shop"][2]) as shop_api, Api(c, apps["bank"][2]) as bank_api:
            push_id = await shop_api.push_to([user], "for shop")
            assert (await recv_push(shop_ws, flows.CROSS_S))["id"] == push_id
            await bank_api.push({"broadcast": True, "data": "bank-wide"})
            assert (await recv_push(bank_ws, flows.CROSS_S))["data"] == "bank-wide"
            # Each side saw its own push only; the other app's crossed the broker to both
            # nodes and was skipped there.
            shop_api_presence = await eventually(
                lambda: shop_api.presence(user), lambda p: len(p["connections"]) == 1,
                within=flows.DB_S, what="shop's user online on A only")
            assert shop_api_presence["connections"][0]["node"] == a.node_id
            await bank_api.disconnect(user, "bank only")
            assert (await wait_closed(bank_ws, flows.CROSS_S))[0] == 4010
            await shop_api.push_to([user], "still here")
            frame = await recv_push(shop_ws, flows.CROSS_S)
            assert frame["data"] == "still here", frame
    finally:
        await shop_ws.close()
        await bank_ws.close()


async def test_an_apps_connection_limit_holds_across_nodes(cluster: Cluster) -> None:
    """``max_connections`` 2: one connection on A and one on B; once both nodes have beaten
    (GATEWAY_RECORD_INTERVAL=1), a third on C is closed with 4003."""
    a, b, c = (node(cluster, n) for n in "abc")
    app = f"capped-{cluster.run_id}"
    secret = cluster.manage("createapp", app, "--max-connections", "2").splitlines()[-1]
    held = [await _app_session(gw, _app_token(uid(), app, secret)) for gw in (a, b)]

    async def third_is_refused() -> int | None:
        ws = await ws_connect(c, _app_token(uid(), app, secret))
        try:
            frame = await asyncio.wait_for(ws.recv(), flows.CROSS_S)
        except websockets.ConnectionClosed:
            return ws.close_code
        assert '"welcome"' in str(frame), frame
        await ws.close()
        return None

    try:
        await eventually(third_is_refused, lambda code: code == 4003, within=flows.DB_S,
                         what="4003 on C once A's and B's beats show the app's 2 connections")
    finally:
        for ws in held:
            await ws.close()


# --- Kept pushes across nodes (PROTOCOL.md section 6) ----------------------------------------

async def test_a_user_who_moves_to_another_node_resumes_there_and_its_ack_settles(
    cluster: Cluster, key: str,
) -> None:
    """On A, then gone; a kept push while away; back on B with ``since``: B replays what A's
    session missed, and B's ack settles the push for A too."""
    a, b, c = (node(cluster, n) for n in "abc")
    user = uid()
    async with Api(c, key) as api:
        ws = await ws_connect(a, make_token(user))
        assert (await recv_json(ws))["node"] == a.node_id
        first = await api.push_to([user], 1, ttl=60)
        assert (await recv_push(ws, flows.CROSS_S))["id"] == first
        await ws.send(json.dumps({"type": "ack", "id": first}))
        await ws.close()
        missed = await api.push_to([user], 2, ttl=60)

        ws = await ws_connect(b, make_token(user) + f"&since={first}")
        welcome = await recv_json(ws)
        assert welcome["recovery"] == {"since": first, "complete": True, "replayed": 1}
        assert (await recv_push(ws))["id"] == missed
        await ws.send(json.dumps({"type": "ack", "id": missed}))
        await ws.close()

        async def state() -> str:
            page = (await api.http.get(f"/api/v1/push/{missed}/recipients")).json()
            return str(page["results"][0]["state"])

        await eventually(state, lambda s: s == "acked", within=flows.DB_S,
                         what="the ack on B settles the push")
        ws = await ws_connect(a, make_token(user))
        assert (await recv_json(ws))["type"] == "welcome"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 1.0)  # acked on B: not again on A
        await ws.close()
