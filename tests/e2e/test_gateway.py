"""End to end against one real node with the default settings (PROTOCOL.md v1).

The tests share the module's node and run in file order; each uses its own user ids, and
the last one checks that the node still serves after all the bad input before it.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from datetime import datetime

import httpx
import jwt
import pytest
import websockets

from tests.support.clients import (
    Api,
    assert_error,
    eventually,
    make_token,
    metric,
    metrics_text,
    ping,
    recv_json,
    recv_push,
    session,
    uid,
    wait_closed,
    ws_connect,
)
from tests.support.gateway import JWT_SECRET, REPO, GatewayProcess

pytestmark = pytest.mark.e2e

PUSH_FIELDS = {"type", "id", "topic", "data", "ts"}
STATUS_FIELDS = {"id", "status", "created_at", "published_at", "targets", "delivered", "acked",
                 "error"}


def now_ms() -> int:
    return int(time.time() * 1000)


def parse_iso(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


# --- Processes and keys --------------------------------------------------------------------

def test_createapikey_prints_exactly_the_key(gateway: GatewayProcess) -> None:
    out = gateway.manage("createapikey", f"printed-{uid()}")
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert re.fullmatch(r"gw_[0-9a-f]{8}_[A-Za-z0-9_-]{20,}", lines[0]), out
    response = httpx.get(f"{gateway.url}/api/v1/users/someone/presence", trust_env=False,
                         headers={"Authorization": f"Token {lines[0]}"})
    assert response.status_code == 200, response.text


def test_createapikey_refuses_a_taken_name_with_nothing_on_stdout(
    gateway: GatewayProcess,
) -> None:
    name = f"taken-{uid()}"
    gateway.manage("createapikey", name)
    result = subprocess.run(
        [sys.executable, "manage.py", "createapikey", name], cwd=REPO, env=gateway.env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert name in result.stderr


# --- WebSocket: authentication -----------------------------------------------------------

BAD_TOKENS = {
    "missing": None,
    "empty": "",
    "malformed": "not-a-jwt",
    "garbage-segments": "aaa.bbb.ccc",
    "bad-signature": make_token("alice", secret="another-secret-0123456789abcdef0123456789"),
    "expired": make_token("alice", ttl=-30),
    "bad-sub-chars": make_token("has space"),
    "bad-sub-too-long": make_token("x" * 129),
    "bad-sub-newline": make_token("alice\n"),
    "sub-not-string": make_token(12345),
    "null-sub": make_token(None),
    "no-sub": jwt.encode({"exp": int(time.time()) + 600}, JWT_SECRET, algorithm="HS256"),
    "no-exp": jwt.encode({"sub": "alice"}, JWT_SECRET, algorithm="HS256"),
    "alg-none": jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, None, algorithm="none"),
    "not-yet-valid": make_token("alice", nbf=int(time.time()) + 600),
    "meta-not-object": make_token("alice", meta=[1, 2]),
}


@pytest.mark.parametrize("header", [False, True], ids=["query", "header"])
@pytest.mark.parametrize("name", list(BAD_TOKENS))
async def test_bad_token_is_accepted_then_closed_4001(gateway: GatewayProcess, name: str,
                                                      header: bool) -> None:
    token = BAD_TOKENS[name]
    ws = await ws_connect(gateway, token, header=header)  # the handshake itself succeeds
    code, frames = await wait_closed(ws)
    assert code == 4001
    assert frames == [], "nothing may be sent before the 4001 close"


async def test_auth_failures_are_counted(gateway: GatewayProcess) -> None:
    before = metric(await metrics_text(gateway), "gateway_auth_failures_total", node="e2e-main")
    ws = await ws_connect(gateway, make_token("alice", ttl=-5))
    assert (await wait_closed(ws))[0] == 4001
    after = await eventually(
        lambda: metrics_text(gateway),
        lambda text: metric(text, "gateway_auth_failures_total", node="e2e-main") > before,
        what="auth failure counted",
    )
    assert metric(after, "gateway_auth_failures_total", node="e2e-main") == before + 1


@pytest.mark.parametrize("header", [False, True], ids=["query", "header"])
async def test_good_token_gets_welcome_then_pong(gateway: GatewayProcess, header: bool) -> None:
    user = uid("welcome")
    ws = await ws_connect(gateway, make_token(user), header=header)
    try:
        welcome = await recv_json(ws)
        assert set(welcome) == {"type", "session", "node", "user", "heartbeat"}, welcome
        assert welcome["type"] == "welcome"
        assert welcome["user"] == user
        assert welcome["node"] == "e2e-main"
        assert isinstance(welcome["session"], str) and welcome["session"]
        assert welcome["heartbeat"] == {"interval": 25, "timeout": 60}
        pong = await ping(ws)
        assert set(pong) == {"type", "ts"}
        assert abs(pong["ts"] - now_ms()) < 60_000, pong
    finally:
        await ws.close()


@pytest.mark.parametrize("path", ["/wsx/", "/ws", "/", "/api/v1/push"])
async def test_other_websocket_paths_are_refused(gateway: GatewayProcess, path: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"ws://{gateway.host}:{gateway.port}{path}?token="
                                 f"{make_token('alice')}", proxy=None, open_timeout=5)
    assert 400 <= refused.value.response.status_code < 500


async def test_sessions_have_distinct_ids(gateway: GatewayProcess) -> None:
    user = uid("twice")
    async with session(gateway, user) as (_, w1), session(gateway, user) as (_, w2):
        assert w1["session"] != w2["session"]


# --- WebSocket: pushes -------------------------------------------------------------------

async def test_targeted_push_reaches_every_connection_of_the_user_only(
    gateway: GatewayProcess, api: Api
) -> None:
    alice, bob = uid("alice"), uid("bob")
    async with (
        session(gateway, alice) as (a1, _),
        session(gateway, alice) as (a2, _),
        session(gateway, bob) as (b1, _),
    ):
        before = now_ms()
        data = {"order": 42, "items": ["x", "y"], "unicode": "żółw ✓"}
        push_id = await api.push_to([alice], data, topic="orders")
        for ws in (a1, a2):
            frame = await recv_push(ws)
            assert set(frame) == PUSH_FIELDS, frame
            assert frame["id"] == push_id
            assert frame["topic"] == "orders"
            assert frame["data"] == data
            assert isinstance(frame["ts"], int) and before - 1000 <= frame["ts"] <= now_ms()
        # Bob's next frame is his own push: alice's never reached him.
        bob_push = await api.push_to([bob], [1, "two", None])
        frame = await recv_push(b1)
        assert frame["id"] == bob_push
        assert frame["data"] == [1, "two", None]
        assert frame["topic"] is None
        # ...and bob's push did not reach alice's connections.
        for ws in (a1, a2):
            await ping(ws)


async def test_push_to_several_users_and_duplicates_deliver_once(
    gateway: GatewayProcess, api: Api
) -> None:
    u1, u2 = uid("multi"), uid("multi")
    async with session(gateway, u1) as (w1, _), session(gateway, u2) as (w2, _):
        response = await api.push({"users": [u1, u2, u1], "data": "hello"})
        body = response.json()
        assert body["status"] == "accepted"
        assert body["targets"] == 2
        for ws in (w1, w2):
            assert (await recv_push(ws))["id"] == body["id"]
        marker = await api.push_to([u1, u2], "marker")
        for ws in (w1, w2):
            assert (await recv_push(ws))["id"] == marker, "the duplicate user was delivered twice"


async def test_broadcast_reaches_every_client_exactly_once(
    gateway: GatewayProcess, api: Api
) -> None:
    x, y = uid("bx"), uid("by")
    async with (
        session(gateway, x) as (x1, _),
        session(gateway, x) as (x2, _),
        session(gateway, y) as (y1, _),
    ):
        clients = (x1, x2, y1)
        # Only our three connections are open on the node (earlier tests closed theirs).
        await eventually(
            lambda: metrics_text(gateway),
            lambda text: metric(text, "gateway_connections", node="e2e-main") == 3,
            what="the node counts exactly our 3 connections",
        )
        response = await api.push({"broadcast": True, "data": {"news": 1}, "topic": "all"})
        assert response.json()["targets"] == "all"
        first = response.json()["id"]
        for ws in clients:
            frame = await recv_push(ws)
            assert frame["id"] == first and frame["data"] == {"news": 1} and frame["topic"] == "all"
        second = (await api.push({"broadcast": True, "data": {"news": 2}})).json()["id"]
        for ws in clients:
            assert (await recv_push(ws))["id"] == second, "the first broadcast came twice"
        status = await eventually(
            lambda: api.get_push(first), lambda s: s["delivered"] >= 3, what="delivered counted"
        )
        assert status["delivered"] == 3
        assert status["targets"] == "all"


async def test_batch_with_good_and_bad_items(gateway: GatewayProcess, api: Api) -> None:
    user = uid("batch")
    async with session(gateway, user) as (ws, _):
        response = await api.http.post("/api/v1/push/batch", json={"pushes": [
            {"users": [user], "data": {"n": 1}},
            {"data": {"n": "no users"}},
            {"users": ["bad id!"], "data": 1},
            {"users": [user], "data": "x" * 70_000},
            {"users": [user], "data": {"n": 2}, "topic": "t"},
            "not an object",
        ]})
        assert response.status_code == 202, response.text
        results = response.json()["results"]
        assert len(results) == 6
        assert set(results[0]) == {"id", "status"} and results[0]["status"] == "accepted"
        assert set(results[4]) == {"id", "status"}
        for index in (1, 2, 3, 5):
            assert isinstance(results[index].get("error"), str), results[index]
            assert isinstance(results[index].get("detail"), str), results[index]
            assert "id" not in results[index]
        assert results[3]["error"] == "payload_too_large"
        first, second = await recv_push(ws), await recv_push(ws)
        assert (first["id"], first["data"]) == (results[0]["id"], {"n": 1})
        assert (second["id"], second["data"], second["topic"]) == (results[4]["id"], {"n": 2}, "t")
        await ping(ws)  # nothing else was delivered


async def test_ack_is_counted_on_the_push(gateway: GatewayProcess, api: Api) -> None:
    user = uid("ack")
    async with session(gateway, user) as (w1, _), session(gateway, user) as (w2, _):
        push_id = await api.push_to([user], {"please": "ack"})
        for ws in (w1, w2):
            assert (await recv_push(ws))["id"] == push_id
        await w1.send(json.dumps({"type": "ack", "id": push_id}))
        await ping(w1)  # the ack was read (no error frame came back)
        status = await eventually(
            lambda: api.get_push(push_id),
            lambda s: s["delivered"] == 2 and s["acked"] == 1,
            within=8, what="delivered=2 acked=1",
        )
        assert set(status) == STATUS_FIELDS, status
        assert status["id"] == push_id
        assert status["status"] == "delivered"
        assert status["targets"] == 1
        assert status["error"] is None
        assert parse_iso(status["published_at"]) >= parse_iso(status["created_at"])


async def test_push_without_connections_is_published_not_delivered(api: Api) -> None:
    push_id = await api.push_to([uid("nobody")], 1)
    status = await eventually(
        lambda: api.get_push(push_id), lambda s: s["status"] != "accepted",
        what="push published",
    )
    assert status["status"] == "published"
    assert status["delivered"] == 0 and status["acked"] == 0


# --- WebSocket: bad frames ---------------------------------------------------------------

async def test_bad_frames_get_an_error_and_the_connection_stays(
    gateway: GatewayProcess, api: Api
) -> None:
    user = uid("badframes")
    async with session(gateway, user) as (ws, _):
        for bad in ("not json", "[1, 2]", '"a string"', "null", '{"type": "subscribe"}', "{}",
                    '{"type": "ack"}', '{"type": "ack", "id": 7}', b"\x00binary"):
            await ws.send(bad)
            frame = await recv_json(ws)
            assert frame["type"] == "error", (bad, frame)
            assert frame["code"] == "bad_frame", (bad, frame)
            assert isinstance(frame["detail"], str) and frame["detail"], (bad, frame)
            await ping(ws)
        push_id = await api.push_to([user], "still here")
        assert (await recv_push(ws))["id"] == push_id


async def test_frame_at_the_limit_passes_one_byte_over_closes_4013(
    gateway: GatewayProcess,
) -> None:
    user = uid("big")
    envelope = '{"type":"ping","pad":""}'
    at_limit = envelope.replace('""', '"' + "x" * (4096 - len(envelope)) + '"')
    assert len(at_limit) == 4096
    async with session(gateway, user) as (ws, _):
        await ws.send(at_limit)
        assert (await recv_json(ws))["type"] == "pong"
        await ws.send(at_limit.replace('"x', '"xx'))
        code, frames = await wait_closed(ws)
        assert code == 4013
        assert frames == []


async def test_oversize_multibyte_frame_closes_4013(gateway: GatewayProcess) -> None:
    async with session(gateway) as (ws, _):
        await ws.send('{"type":"ping","pad":"' + "€" * 1400 + '"}')  # 1424 chars, 4224 bytes
        assert (await wait_closed(ws))[0] == 4013


# --- REST API: errors --------------------------------------------------------------------

async def test_401_without_or_with_a_wrong_key(gateway: GatewayProcess) -> None:
    cases = {
        "none": {},
        "unknown": {"Authorization": "Token gw_deadbeef_" + "A" * 43},
        "garbage": {"Authorization": "Token nope"},
        "three parts": {"Authorization": "Token a b"},
        "other scheme": {"Authorization": "Bearer " + make_token("alice")},
    }
    async with httpx.AsyncClient(base_url=gateway.url, trust_env=False) as http:
        for name, headers in cases.items():
            for method, path, body in (
                ("POST", "/api/v1/push", {"users": ["u1"], "data": 1}),
                ("GET", "/api/v1/users/u1/presence", None),
                ("POST", "/api/v1/tokens", {"user": "u1"}),
            ):
                response = await http.request(method, path, json=body, headers=headers)
                assert_error(response, 401, "unauthorized")
                assert response.headers.get("www-authenticate"), name


async def test_403_for_a_deactivated_client(gateway: GatewayProcess) -> None:
    name = f"revoked-{uid()}"
    key = gateway.api_key(name)
    async with Api(gateway, key) as client:
        assert (await client.http.get("/api/v1/users/u1/presence")).status_code == 200
        db = sqlite3.connect(gateway.log_path.parent / "gateway.sqlite3", timeout=20)
        try:
            with db:
                changed = db.execute(
                    "UPDATE push_app_apiclient SET is_active = 0 WHERE name = ?", (name,)
                ).rowcount
        finally:
            db.close()
        assert changed == 1
        assert_error(await client.push({"users": ["u1"], "data": 1}, expect=None), 403, "forbidden")
        assert_error(await client.http.get("/api/v1/users/u1/presence"), 403, "forbidden")


async def test_404_for_unknown_and_other_clients_pushes(api: Api, other_api: Api) -> None:
    assert_error(await api.http.get("/api/v1/push/0123456789abcdef0123456789abcdef"), 404,
                 "not_found")
    assert_error(await api.http.get("/api/v1/push/nope"), 404, "not_found")
    mine = await api.push_to([uid()], 1)
    assert (await api.get_push(mine))["id"] == mine
    assert_error(await other_api.http.get(f"/api/v1/push/{mine}"), 404, "not_found")


@pytest.mark.parametrize(("body", "field"), [
    ({}, "data"),
    ({"users": ["u1"]}, "data"),
    ({"data": 1}, "users"),
    ({"users": "u1", "data": 1}, "users"),
    ({"users": [], "data": 1}, "users"),
    ({"users": ["bad id"], "data": 1}, "users"),
    ({"users": [7], "data": 1}, "users"),
    ({"users": ["x" * 129], "data": 1}, "users"),
    ({"users": ["alice\n"], "data": 1}, "users"),
    ({"users": ["u1"], "data": 1, "colour": "red"}, "colour"),
    ({"broadcast": "yes", "data": 1}, "broadcast"),
    ({"broadcast": True, "users": ["u1"], "data": 1}, "users"),
    ({"users": ["u1"], "data": 1, "topic": ""}, "topic"),
    ({"users": ["u1"], "data": 1, "topic": 5}, "topic"),
    ({"users": ["u1"], "data": 1, "ttl": -1}, "ttl"),
    ({"users": ["u1"], "data": 1, "ttl": "60"}, "ttl"),
    ({"users": ["u1"], "data": 1, "ttl": True}, "ttl"),
    ({"users": ["u1"], "data": 1, "idempotency_key": ""}, "idempotency_key"),
    ({"users": ["u1"], "data": 1, "idempotency_key": 5}, "idempotency_key"),
])
async def test_400_for_bad_push_fields(api: Api, body: dict, field: str) -> None:
    error = assert_error(await api.push(body, expect=None), 400)
    assert field in error.get("fields", {}), error


async def test_400_for_a_body_that_is_not_an_object(api: Api) -> None:
    for body in ([1, 2], "text", 3, None):
        assert_error(await api.push(body, expect=None), 400)


async def test_400_for_too_many_users(api: Api) -> None:
    users = [f"u{i}" for i in range(1001)]
    error = assert_error(await api.push({"users": users, "data": 1}, expect=None), 400)
    assert "users" in error["fields"]
    assert (await api.push({"users": users[:1000], "data": 1})).json()["targets"] == 1000


async def test_400_for_malformed_json(api: Api) -> None:
    for path in ("/api/v1/push", "/api/v1/push/batch", "/api/v1/tokens"):
        response = await api.http.post(path, content=b'{"users": ["u1"], "data": ',
                                       headers={"Content-Type": "application/json"})
        assert_error(response, 400, "bad_json")


async def test_400_for_nan_and_infinity(api: Api) -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = b'{"users": ["u1"], "data": {"x": ' + literal.encode() + b"}}"
        response = await api.http.post("/api/v1/push", content=body,
                                       headers={"Content-Type": "application/json"})
        assert_error(response, 400, "bad_json")


async def test_chunked_request_bodies_are_read(gateway: GatewayProcess, api: Api) -> None:
    user = uid("chunked")

    def chunked(body: dict):
        raw = json.dumps(body).encode()

        async def stream():
            for start in range(0, len(raw), 7):
                yield raw[start:start + 7]

        return stream()

    async with session(gateway, user) as (ws, _):
        response = await api.http.post("/api/v1/push", content=chunked(
            {"users": [user], "data": {"via": "chunks"}}
        ), headers={"Content-Type": "application/json"})
        assert response.status_code == 202, response.text
        frame = await recv_push(ws)
        assert (frame["id"], frame["data"]) == (response.json()["id"], {"via": "chunks"})
    response = await api.http.post("/api/v1/tokens", content=chunked({"user": user}),
                                   headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text


async def test_400_for_bad_batches(api: Api) -> None:
    for body in ({}, {"pushes": {}}, {"pushes": []}, [1]):
        error = assert_error(await api.http.post("/api/v1/push/batch", json=body), 400)
        if isinstance(body, dict):
            assert "pushes" in error.get("fields", {}), error


async def test_400_for_a_bad_user_id_in_the_url(api: Api) -> None:
    for user in ("bad!id", "x" * 129, "a%20b", "alice%0A"):
        assert_error(await api.http.get(f"/api/v1/users/{user}/presence"), 400)
        assert_error(await api.http.post(f"/api/v1/users/{user}/disconnect", json={}), 400)


async def test_400_for_a_bad_disconnect_reason(api: Api) -> None:
    for body in ({"reason": 5}, {"reason": "x" * 201}, ["x"]):
        assert_error(await api.http.post("/api/v1/users/u1/disconnect", json=body), 400)


async def test_413_for_data_over_the_payload_limit(api: Api) -> None:
    error = assert_error(
        await api.push({"users": ["u1"], "data": "x" * 65_536}, expect=None), 413,
        "payload_too_large",
    )
    assert "65536" in error["detail"]
    # Exactly at the limit once serialised (the quotes count) is accepted.
    await api.push({"users": ["u1"], "data": "x" * 65_534})


async def test_415_for_a_text_body(api: Api) -> None:
    for path in ("/api/v1/push", "/api/v1/push/batch", "/api/v1/tokens"):
        response = await api.http.post(path, content=b'{"users": ["u1"], "data": 1}',
                                       headers={"Content-Type": "text/plain"})
        assert_error(response, 415, "unsupported_media_type")


async def test_unknown_api_path_and_method(api: Api) -> None:
    assert_error(await api.http.get("/api/v1/push"), 405)
    assert (await api.http.get("/api/v1/nothing-here")).status_code == 404


# --- REST API: idempotency, presence, disconnect, tokens ------------------------------------

async def test_idempotency_key_per_client(gateway: GatewayProcess, api: Api,
                                          other_api: Api) -> None:
    user = uid("idem")
    key = f"order-{uid()}"
    async with session(gateway, user) as (ws, _):
        first = await api.push({"users": [user], "data": {"n": 1}, "idempotency_key": key})
        first_id = first.json()["id"]
        assert (await recv_push(ws))["id"] == first_id

        again = await api.push({"users": [user], "data": {"n": 1}, "idempotency_key": key},
                               expect=200)
        assert again.json()["id"] == first_id
        assert again.json()["targets"] == 1
        marker = await api.push_to([user], "marker")
        assert (await recv_push(ws))["id"] == marker, "the repeated push was delivered again"

        theirs = await other_api.push({"users": [user], "data": {"n": 2}, "idempotency_key": key})
        assert theirs.json()["id"] != first_id
        frame = await recv_push(ws)
        assert (frame["id"], frame["data"]) == (theirs.json()["id"], {"n": 2})

        status = await eventually(lambda: api.get_push(first_id), lambda s: s["delivered"] >= 1,
                                  what="first push delivered")
        assert status["delivered"] == 1


async def test_idempotency_key_in_a_batch(gateway: GatewayProcess, api: Api) -> None:
    user = uid("idembatch")
    key = f"batch-{uid()}"
    async with session(gateway, user) as (ws, _):
        item = {"users": [user], "data": "once", "idempotency_key": key}
        response = await api.http.post("/api/v1/push/batch", json={"pushes": [item, item]})
        assert response.status_code == 202, response.text
        ids = [r["id"] for r in response.json()["results"]]
        assert ids[0] == ids[1]
        assert (await recv_push(ws))["id"] == ids[0]
        marker = await api.push_to([user], "marker")
        assert (await recv_push(ws))["id"] == marker


async def test_presence_online_then_offline(gateway: GatewayProcess, api: Api) -> None:
    user = uid("presence")
    assert await api.presence(user) == {"user": user, "online": False, "connections": []}
    ws1 = await ws_connect(gateway, make_token(user))
    ws2 = await ws_connect(gateway, make_token(user), header=True)
    try:
        s1, s2 = [(await recv_json(ws))["session"] for ws in (ws1, ws2)]
        presence = await api.presence(user)
        assert presence["user"] == user and presence["online"] is True
        assert [c["session"] for c in presence["connections"]] == [s1, s2]  # oldest first
        for conn in presence["connections"]:
            assert set(conn) == {"session", "node", "connected_at", "last_seen"}, conn
            assert conn["node"] == "e2e-main"
            assert parse_iso(conn["last_seen"]) >= parse_iso(conn["connected_at"])
            assert abs(parse_iso(conn["connected_at"]).timestamp() - time.time()) < 60
        seen = {c["session"]: parse_iso(c["last_seen"]) for c in presence["connections"]}
        await ping(ws2)  # a frame is life: its last_seen moves on
        later = {c["session"]: parse_iso(c["last_seen"])
                 for c in (await api.presence(user))["connections"]}
        assert later[s2] > seen[s2] and later[s1] == seen[s1], (seen, later)
        await ws1.close()
        presence = await eventually(lambda: api.presence(user),
                                    lambda p: len(p["connections"]) == 1, what="one left")
        assert presence["online"] is True
        assert presence["connections"][0]["session"] == s2
    finally:
        await ws1.close()
        await ws2.close()
    offline = await eventually(lambda: api.presence(user), lambda p: not p["online"],
                               what="user offline after close")
    assert offline["connections"] == []


async def test_disconnect_closes_every_connection_of_the_user_only(
    gateway: GatewayProcess, api: Api
) -> None:
    user, other = uid("kick"), uid("stay")
    async with (
        session(gateway, user) as (k1, _),
        session(gateway, user) as (k2, _),
        session(gateway, other) as (s1, _),
    ):
        response = await api.http.post(f"/api/v1/users/{user}/disconnect",
                                       json={"reason": "account closed"})
        assert response.status_code == 202, response.text
        assert response.json()["user"] == user
        for ws in (k1, k2):
            code, frames = await wait_closed(ws)
            assert code == 4010
            assert frames == []
        await ping(s1)
        push_id = await api.push_to([other, user], "after")
        assert (await recv_push(s1))["id"] == push_id
        presence = await eventually(lambda: api.presence(user), lambda p: not p["online"],
                                    what="kicked user offline")
        assert presence["connections"] == []
        # An empty body is fine too, and a user with no connections is no error.
        response = await api.http.post(f"/api/v1/users/{uid()}/disconnect")
        assert response.status_code == 202, response.text


async def test_token_minting(gateway: GatewayProcess, api: Api) -> None:
    user = uid("minted")
    response = await api.http.post("/api/v1/tokens",
                                   json={"user": user, "ttl": 120, "meta": {"plan": "pro"}})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    assert abs(parse_iso(body["expires_at"]).timestamp() - (time.time() + 120)) < 10
    ws = await ws_connect(gateway, body["token"])
    try:
        welcome = await recv_json(ws)
        assert welcome["type"] == "welcome" and welcome["user"] == user
    finally:
        await ws.close()
    default = await api.http.post("/api/v1/tokens", json={"user": user})
    assert default.status_code == 201, default.text
    assert abs(parse_iso(default.json()["expires_at"]).timestamp() - (time.time() + 3600)) < 10


@pytest.mark.parametrize("body", [
    {"user": "u1", "ttl": 0},
    {"user": "u1", "ttl": -5},
    {"user": "u1", "ttl": "60"},
    {"user": "u1", "ttl": 1.5},
    {"user": "u1", "ttl": True},
    {"user": "u1", "ttl": 10**9},
    {"user": "bad id"},
    {"ttl": 60},
    {"user": "u1", "meta": "x"},
], ids=lambda b: json.dumps(b)[:40])
async def test_token_minting_rejects_bad_bodies(api: Api, body: dict) -> None:
    error = assert_error(await api.http.post("/api/v1/tokens", json=body), 400)
    assert set(error["fields"]) & {"user", "ttl", "meta"}, error


# --- Operations --------------------------------------------------------------------------

async def test_health_and_readiness(anon: Api) -> None:
    health = await anon.http.get("/healthz")
    assert health.status_code == 200
    assert health.json()["node"] == "e2e-main"
    ready = await anon.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {
        "database": "ok", "channel_layer": "ok", "broker": "ok", "consumer": "ok"
    }


async def test_metrics_follow_connections_and_pushes(gateway: GatewayProcess, api: Api) -> None:
    text = await metrics_text(gateway)
    assert "# TYPE gateway_connections gauge" in text
    for name in ("gateway_connections", "gateway_users"):
        assert f"{name}{{" in text, name
    # Every earlier test closed its connections: wait until the node has seen them all go.
    connections = 0.0
    text = await eventually(
        lambda: metrics_text(gateway),
        lambda t: metric(t, "gateway_connections", node="e2e-main") == connections,
        what="no connections left from earlier tests",
    )
    deliveries = metric(text, "gateway_deliveries_total", node="e2e-main")
    accepted = metric(text, "gateway_pushes_total", node="e2e-main", status="accepted")
    user = uid("metrics")
    async with session(gateway, user) as (ws, _):
        text = await eventually(
            lambda: metrics_text(gateway),
            lambda t: metric(t, "gateway_connections", node="e2e-main") == connections + 1,
            what="connection gauge +1",
        )
        await api.push_to([user], "counted")
        await recv_push(ws)
        text = await metrics_text(gateway)
        # Labelled series exist from their first sample on, so this holds run alone too.
        for name in ("gateway_push_latency_seconds_bucket", "gateway_deliveries_total",
                     "gateway_pushes_total"):
            assert f"{name}{{" in text, name
        assert metric(text, "gateway_deliveries_total", node="e2e-main") == deliveries + 1
        assert metric(text, "gateway_pushes_total", node="e2e-main",
                      status="accepted") == accepted + 1
    await eventually(
        lambda: metrics_text(gateway),
        lambda t: metric(t, "gateway_connections", node="e2e-main") == connections,
        what="connection gauge back",
    )


async def test_openapi_schema_and_docs(anon: Api) -> None:
    schema = await anon.http.get("/api/schema/", params={"format": "json"})
    assert schema.status_code == 200, schema.text
    doc = schema.json()
    assert doc["openapi"].startswith("3.")
    for path in ("/api/v1/push", "/api/v1/push/batch", "/api/v1/push/{push_id}",
                 "/api/v1/users/{user_id}/presence", "/api/v1/users/{user_id}/disconnect",
                 "/api/v1/tokens"):
        assert path in doc["paths"], sorted(doc["paths"])
    default = await anon.http.get("/api/schema/")
    assert default.status_code == 200 and "openapi" in default.text
    docs = await anon.http.get("/api/docs/")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_demo_page_and_static_files_without_debug(anon: Api) -> None:
    demo = await anon.http.get("/demo/")
    assert demo.status_code == 200
    assert re.search(r"<textarea[^>]*id=\"token\"", demo.text), demo.text[:500]
    css = await anon.http.get("/static/admin/css/base.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert len(css.content) > 1000
    assert (await anon.http.get("/static/admin/css/no-such-file.css")).status_code == 404
    admin = await anon.http.get("/admin/login/")
    assert admin.status_code == 200
    assert (await anon.http.get("/")).status_code == 200


# --- Last: the node survived everything above --------------------------------------------

async def test_node_still_serves_after_all_the_bad_input(gateway: GatewayProcess,
                                                         api: Api) -> None:
    assert gateway.proc is not None and gateway.proc.poll() is None
    user = uid("final")
    async with session(gateway, user) as (ws, welcome):
        assert welcome["node"] == "e2e-main"
        push_id = await api.push_to([user], {"final": True})
        frame = await recv_push(ws)
        assert (frame["id"], frame["data"]) == (push_id, {"final": True})
        await ping(ws)
    assert "Traceback" not in gateway.log(), gateway.log()[-4000:]
