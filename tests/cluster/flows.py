"""The cross-node flows, shared by the all-in-one cluster and the split-node cluster.

Each flow takes the nodes it needs and an API key valid on all of them (one database), and
uses user ids of its own. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection

from tests.support.clients import (
    Api,
    eventually,
    make_token,
    metric,
    metrics_text,
    recv_json,
    recv_push,
    uid,
    wait_closed,
    ws_connect,
)
from tests.support.gateway import GatewayProcess

#: Bound for a push to cross the broker to another node.
CROSS_S = 10.0
#: Bound for the delivery totals of a push to reach the database (one ledger write per second
#: per node) and for the session records behind presence (GATEWAY_RECORD_INTERVAL=1).
DB_S = 10.0


async def connect(gw: GatewayProcess, user: str) -> tuple[ClientConnection, dict[str, Any]]:
    """A connected client of ``user`` on ``gw`` that has seen its welcome."""
    ws = await ws_connect(gw, make_token(user))
    try:
        welcome = await recv_json(ws)
    except BaseException:
        await ws.close()
        raise
    assert welcome["type"] == "welcome", welcome
    assert welcome["node"] == gw.node_id, welcome
    assert welcome["user"] == user, welcome
    return ws, welcome


class Clients:
    """Connections a flow opens; ``close`` closes them all (in a ``finally``)."""

    def __init__(self) -> None:
        self.open: list[ClientConnection] = []

    async def connect(self, gw: GatewayProcess,
                      user: str) -> tuple[ClientConnection, dict[str, Any]]:
        ws, welcome = await connect(gw, user)
        self.open.append(ws)
        return ws, welcome

    async def close(self) -> None:
        for ws in self.open:
            with contextlib.suppress(Exception):  # the server may be gone already
                await ws.close()
        self.open.clear()


async def ack(ws: ClientConnection, push_id: str) -> None:
    await ws.send(json.dumps({"type": "ack", "id": push_id}))


async def wait_push_totals(api: Api, push_id: str, *, delivered: int, acked: int | None = None,
                           within: float = DB_S) -> dict[str, Any]:
    """The push's status once ``delivered`` (and ``acked``) reached these sums over nodes."""
    def done(push: dict[str, Any]) -> bool:
        return (push["status"] == "delivered" and push["delivered"] == delivered
                and (acked is None or push["acked"] == acked))

    return await eventually(lambda: api.get_push(push_id), done, within=within,
                            what=f"push {push_id} delivered={delivered} acked={acked}")


async def wait_connections(expected: list[tuple[GatewayProcess, int]],
                           within: float = 10.0) -> None:
    """Each node's ``gateway_connections`` gauge reads the expected number."""
    for gw, count in expected:
        async def read(gw: GatewayProcess = gw) -> float:
            return metric(await metrics_text(gw), "gateway_connections", node=gw.node_id)

        await eventually(read, lambda value, count=count: value == count, within=within,
                         interval=0.2, what=f"{count} connection(s) on {gw.node_id}")


def data(label: str) -> dict[str, str]:
    return {"label": label, "nonce": uuid.uuid4().hex}


# --- Flows -------------------------------------------------------------------------------

async def push_crosses_nodes(key: str, publisher: GatewayProcess,
                             holder: GatewayProcess) -> None:
    """A push POSTed to ``publisher`` reaches a client on ``holder``; delivered, acked."""
    user = uid("cross")
    clients = Clients()
    try:
        async with Api(publisher, key) as api:
            ws, _ = await clients.connect(holder, user)
            body = data("cross")
            response = await api.push({"users": [user], "data": body, "topic": "news"})
            accepted = response.json()
            assert accepted["status"] == "accepted" and accepted["targets"] == 1, accepted
            frame = await recv_push(ws, within=CROSS_S)
            assert frame["id"] == accepted["id"], frame
            assert frame["data"] == body and frame["topic"] == "news", frame
            await ack(ws, frame["id"])
            await wait_push_totals(api, accepted["id"], delivered=1, acked=1)
    finally:
        await clients.close()


async def user_on_two_nodes(key: str, publisher: GatewayProcess, first: GatewayProcess,
                            second: GatewayProcess, asker: GatewayProcess) -> None:
    """A user connected to ``first`` and ``second`` gets a push POSTed to ``publisher`` on
    both: ``delivered`` and ``acked`` sum over the nodes, and presence asked on ``asker``
    lists both connections with their nodes."""
    user, bystander = uid("two"), uid("bystander")
    clients = Clients()
    try:
        async with Api(publisher, key) as api, Api(asker, key) as asker_api:
            ws1, welcome1 = await clients.connect(first, user)
            ws2, welcome2 = await clients.connect(second, user)
            other, _ = await clients.connect(second, bystander)

            presence = await eventually(
                lambda: asker_api.presence(user), lambda p: len(p["connections"]) == 2,
                within=DB_S, what=f"two connections of {user} in presence on {asker.node_id}",
            )
            assert presence["online"] is True and presence["user"] == user, presence
            seen = {(c["session"], c["node"]) for c in presence["connections"]}
            assert seen == {(welcome1["session"], first.node_id),
                            (welcome2["session"], second.node_id)}, presence

            push_id = await api.push_to([user], data("both"))
            for ws in (ws1, ws2):
                frame = await recv_push(ws, within=CROSS_S)
                assert frame["id"] == push_id, frame
                await ack(ws, push_id)
            await wait_push_totals(api, push_id, delivered=2, acked=2)
            # The bystander on the same node got nothing: the next frame is its own push.
            own = await api.push_to([bystander], data("own"))
            assert (await recv_push(other, within=CROSS_S))["id"] == own
    finally:
        await clients.close()


async def broadcast_exactly_once(key: str, publisher: GatewayProcess,
                                 nodes: list[GatewayProcess]) -> None:
    """A broadcast reaches one client on each node once: the next frame each client gets
    is a targeted push sent after the broadcast; ``delivered`` is the number of nodes."""
    clients = Clients()
    try:
        async with Api(publisher, key) as api:
            users = [uid(f"bc{i}") for i in range(len(nodes))]
            sockets = [(await clients.connect(gw, user))[0] for gw, user in zip(nodes, users,
                                                                                 strict=True)]
            # Only this flow's clients are connected anywhere: the total is exact.
            await wait_connections([(gw, 1) for gw in nodes])
            response = await api.push({"broadcast": True, "data": data("all")})
            accepted = response.json()
            assert accepted["targets"] == "all" and accepted["status"] == "accepted", accepted
            for ws in sockets:
                frame = await recv_push(ws, within=CROSS_S)
                assert frame["id"] == accepted["id"], frame
                await ack(ws, frame["id"])
            follow_up = await api.push_to(users, data("after"))
            for ws in sockets:
                frame = await recv_push(ws, within=CROSS_S)
                assert frame["id"] == follow_up, f"expected the follow-up push, got {frame}"
            total = len(nodes)
            await wait_push_totals(api, accepted["id"], delivered=total, acked=total)
            await wait_push_totals(api, follow_up, delivered=total)
    finally:
        await clients.close()


async def disconnect_crosses_nodes(key: str, asked: GatewayProcess,
                                   holder: GatewayProcess) -> None:
    """``POST .../disconnect`` on ``asked`` closes every connection of the user on
    ``holder`` with 4010; another user there stays connected and served."""
    user, other_user = uid("gone"), uid("stays")
    clients = Clients()
    try:
        async with Api(asked, key) as api:
            ws1, _ = await clients.connect(holder, user)
            ws2, _ = await clients.connect(holder, user)
            other, _ = await clients.connect(holder, other_user)
            await eventually(lambda: api.presence(user), lambda p: len(p["connections"]) == 2,
                             within=DB_S, what=f"{user} online on {holder.node_id}")
            await api.disconnect(user, reason="cluster test")
            for ws in (ws1, ws2):
                code, frames = await wait_closed(ws, within=CROSS_S)
                assert code == 4010, (code, frames)
                assert frames == [], frames
            await eventually(lambda: api.presence(user), lambda p: not p["online"],
                             within=DB_S, what=f"{user} offline after the disconnect")
            push_id = await api.push_to([other_user], data("still here"))
            assert (await recv_push(other, within=CROSS_S))["id"] == push_id
    finally:
        await clients.close()
