"""Kept pushes, resume and per-recipient state end to end (PROTOCOL.md section 6), against
real nodes under both servers on SQLite, and under Daphne on PostgreSQL.

Each test uses users of its own on a node shared by the module (record interval and
delivery writes: once a second), and polls the recipients endpoint for states, which the
nodes write in batches.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.support.clients import (
    Api,
    assert_error,
    eventually,
    make_token,
    recv_json,
    recv_push,
    uid,
    ws_connect,
)
from tests.support.cluster import fresh_database
from tests.support.gateway import SERVERS, GatewayProcess

pytestmark = pytest.mark.e2e

#: States reach the database within a second or two (the ledger writes once a second).
SETTLE_S = 8.0


@pytest.fixture(scope="module", params=[
    *((server, "sqlite") for server in SERVERS),
    pytest.param(("daphne", "postgresql"), marks=pytest.mark.postgres),
], ids=lambda p: "-".join(p))
def variant(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(server, database) of the module's node."""
    return request.param


@pytest.fixture(scope="module")
def database_env(variant: tuple[str, str]) -> Iterator[dict[str, str]]:
    # Set up before the node's starter, so torn down after the node has stopped.
    if variant[1] != "postgresql":
        yield {}
        return
    with fresh_database("kept") as url:
        yield {"DATABASE_URL": url}


@pytest.fixture(scope="module")
def node(variant: tuple[str, str], database_env: dict[str, str],
         start_module_node: Any) -> GatewayProcess:
    server, database = variant
    return start_module_node(f"e2e-kept-{server}-{database}", server=server,
                             GATEWAY_RECORD_INTERVAL="1", GATEWAY_MAX_PENDING_PER_USER="3",
                             **database_env)


@pytest.fixture(scope="module")
def key(node: GatewayProcess) -> str:
    return node.api_key()


async def connect(gw: GatewayProcess, user: str, since: str | None = None
                  ) -> tuple[Any, dict[str, Any]]:
    ws = await ws_connect(gw, make_token(user) + (f"&since={since}" if since else ""))
    welcome = await recv_json(ws)
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


async def pushes_until_quiet(ws: Any, quiet_s: float = 0.7) -> list[dict[str, Any]]:
    """Every frame until none comes for ``quiet_s`` (the replay, then nothing)."""
    frames = []
    while True:
        try:
            raw = await asyncio.wait_for(ws.recv(), quiet_s)
        except TimeoutError:
            return frames
        frames.append(json.loads(raw))


async def states(api: Api, push_id: str, **query: str) -> dict[str, str]:
    response = await api.http.get(f"/api/v1/push/{push_id}/recipients", params=query)
    assert response.status_code == 200, response.text
    return {r["user"]: r["state"] for r in response.json()["results"]}


async def settled(api: Api, push_id: str, expected: dict[str, str]) -> None:
    await eventually(lambda: states(api, push_id), lambda s: s == expected, within=SETTLE_S,
                     what=f"recipients of {push_id} = {expected}")


async def test_a_kept_push_waits_for_an_offline_user_and_comes_until_acked(
    node: GatewayProcess, key: str,
) -> None:
    user, other = uid(), uid()
    async with Api(node, key) as api:
        push_id = await api.push_to([user, other], {"n": 1}, ttl=60)
        await settled(api, push_id, {user: "pending", other: "pending"})

        ws, _ = await connect(node, user)  # offline when pushed: gets it on connecting
        frame = await recv_push(ws)
        assert (frame["id"], frame["data"], frame.get("redelivered")) == (push_id, {"n": 1}, None)
        await ws.close()
        await settled(api, push_id, {user: "delivered", other: "pending"})

        ws, _ = await connect(node, user)  # not acked: again, marked redelivered
        frame = await recv_push(ws)
        assert (frame["id"], frame["redelivered"]) == (push_id, True)
        await ws.send(json.dumps({"type": "ack", "id": push_id}))
        await ws.close()

        ws, _ = await connect(node, user)  # acked: never again
        assert [f for f in await pushes_until_quiet(ws) if f["type"] == "push"] == []
        await ws.close()
        await settled(api, push_id, {user: "acked", other: "pending"})
        page = (await api.http.get(f"/api/v1/push/{push_id}/recipients")).json()["results"]
        mine = next(r for r in page if r["user"] == user)
        assert mine["attempts"] == 2 and mine["delivered_at"] and mine["acked_at"]
        assert (await api.get_push(push_id))["acked"] == 1


async def test_a_live_only_push_is_not_kept(node: GatewayProcess, key: str) -> None:
    user = uid()
    async with Api(node, key) as api:
        push_id = await api.push_to([user], "now or never", ttl=0)
        await settled(api, push_id, {user: "offline"})
        ws, _ = await connect(node, user)
        assert await pushes_until_quiet(ws) == []
        await ws.close()


async def test_an_expired_push_is_never_sent_and_reads_expired(node: GatewayProcess,
                                                               key: str) -> None:
    user = uid()
    async with Api(node, key) as api:
        push_id = await api.push_to([user], "soon gone", ttl=1)
        await settled(api, push_id, {user: "expired"})
        ws, _ = await connect(node, user)
        assert await pushes_until_quiet(ws) == []
        await ws.close()


async def test_resume_sends_what_was_missed_in_order_before_live_pushes(
    node: GatewayProcess, key: str,
) -> None:
    user = uid()
    async with Api(node, key) as api:
        ws, _ = await connect(node, user)
        first = await api.push_to([user], 1, ttl=60)
        assert (await recv_push(ws))["id"] == first
        await ws.send(json.dumps({"type": "ack", "id": first}))
        await ws.close()
        # Missed while away: two targeted pushes and a kept broadcast, a live-only one.
        missed = [await api.push_to([user], 2, ttl=60)]
        missed.append(str((await api.push({"broadcast": True, "data": 3, "ttl": 60})
                           ).json()["id"]))
        await api.push_to([user], "live only", ttl=0)
        missed.append(await api.push_to([user], 4, ttl=60))

        ws, welcome = await connect(node, user, since=first)
        assert welcome["recovery"] == {"since": first, "complete": True, "replayed": 3}
        replay = [await recv_push(ws) for _ in missed]
        assert [f["id"] for f in replay] == missed  # accept order; ``since`` not again
        live = await api.push_to([user], 5, ttl=60)
        assert (await recv_push(ws))["id"] == live
        await ws.close()


async def test_an_unknown_since_is_an_incomplete_recovery(node: GatewayProcess) -> None:
    for since in ("0" * 32, "not-a-push-id"):
        ws, welcome = await connect(node, uid(), since=since)
        recovery = welcome["recovery"]
        assert (recovery["since"], recovery["complete"]) == (since, False)
        # What the gateway still keeps is sent all the same (here: the app's kept
        # broadcasts of the other tests, for a since of the right shape).
        assert recovery["replayed"] == len(await pushes_until_quiet(ws))
        await ws.close()


async def test_past_the_pending_limit_the_oldest_are_dropped(node: GatewayProcess,
                                                             key: str) -> None:
    user = uid()
    async with Api(node, key) as api:
        ids = [await api.push_to([user], i, ttl=60) for i in range(5)]
        ws, _ = await connect(node, user)  # GATEWAY_MAX_PENDING_PER_USER=3: the newest 3
        assert [f["id"] for f in await pushes_until_quiet(ws)] == ids[2:]
        await ws.close()
        for push_id, expected in zip(ids, ["dropped"] * 2 + ["delivered"] * 3, strict=True):
            await settled(api, push_id, {user: expected})


async def test_the_recipients_endpoint_pages_filters_and_refuses(node: GatewayProcess,
                                                                 key: str) -> None:
    users = sorted(uid("r") for _ in range(150))
    async with Api(node, key) as api, Api(node, node.api_key()) as stranger:
        push_id = await api.push_to(users, "many", ttl=60)
        first = (await api.http.get(f"/api/v1/push/{push_id}/recipients")).json()
        assert [r["user"] for r in first["results"]] == users[:100]
        assert first["next"]
        second = (await api.http.get(f"/api/v1/push/{push_id}/recipients",
                                     params={"cursor": first["next"]})).json()
        assert [r["user"] for r in second["results"]] == users[100:]
        assert second["next"] is None
        assert await states(api, push_id, state="acked") == {}
        assert len(await states(api, push_id, state="pending")) == 100
        for query, code in [({"state": "lost"}, "invalid"), ({"cursor": "!!"}, "invalid")]:
            response = await api.http.get(f"/api/v1/push/{push_id}/recipients", params=query)
            assert_error(response, 400, code)
        assert_error(await stranger.http.get(f"/api/v1/push/{push_id}/recipients"), 404)
        broadcast = (await api.push({"broadcast": True, "data": 1})).json()["id"]
        assert_error(await api.http.get(f"/api/v1/push/{broadcast}/recipients"), 409,
                     "not_per_recipient")


async def test_another_apps_user_of_the_same_id_never_gets_the_kept_push(
    node: GatewayProcess, key: str,
) -> None:
    app = f"kept-{uid()[-6:]}"
    secret = node.manage("createapp", app).splitlines()[-1]
    user = uid()
    async with Api(node, key) as api:
        push_id = await api.push_to([user], "default's", ttl=60)
        token = jwt.encode({"sub": user, "exp": int(time.time()) + 600}, secret,
                           algorithm="HS256", headers={"kid": app})
        ws = await ws_connect(node, token + f"&since={push_id}")
        welcome = await recv_json(ws)
        assert welcome["recovery"]["complete"] is False  # not a push of this app
        assert await pushes_until_quiet(ws) == []
        await ws.close()
        await settled(api, push_id, {user: "pending"})


async def test_a_client_that_drops_during_its_replay_loses_nothing(node: GatewayProcess,
                                                                   key: str) -> None:
    user = uid()
    async with Api(node, key) as api:
        ids = [await api.push_to([user], i, ttl=60) for i in range(3)]
        ws = await ws_connect(node, make_token(user))
        ws.transport.abort()  # gone before reading its welcome and replay
        ws, _ = await connect(node, user)
        assert [f["id"] for f in await pushes_until_quiet(ws)] == ids
        await ws.close()
