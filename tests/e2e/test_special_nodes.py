"""End to end against nodes started with special settings: heartbeat timeout, connection
cap, frame rate, small limits, API rate limit, slow clients, draining.

What depends on the web server (heartbeats, slow clients, draining, the basic round trip)
runs under each ``rungateway --server``."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable

import pytest

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
    small_rcvbuf_socket,
    uid,
    wait_closed,
    ws_connect,
)
from tests.support.gateway import SERVERS, GatewayProcess

pytestmark = pytest.mark.e2e
each_server = pytest.mark.parametrize("server", SERVERS)

NodeStarter = Callable[..., GatewayProcess]


# --- Heartbeat ---------------------------------------------------------------------------

@each_server
async def test_silent_client_is_closed_4008_and_goes_offline(start_node: NodeStarter,
                                                             server: str) -> None:
    gw = start_node("e2e-heartbeat", server, GATEWAY_HEARTBEAT_INTERVAL="1",
                    GATEWAY_HEARTBEAT_TIMEOUT="2")
    silent_user, chatty_user = uid("silent"), uid("chatty")
    async with Api(gw, gw.api_key()) as api, session(gw, chatty_user) as (chatty, _):
        # Protocol-level pings (every 0.3 s here) are no sign of life to the application.
        silent = await ws_connect(gw, make_token(silent_user), ping_interval=0.3,
                                  ping_timeout=5)
        welcome = await recv_json(silent)
        assert welcome["heartbeat"] == {"interval": 1, "timeout": 2}
        opened = time.monotonic()
        assert (await api.presence(silent_user))["online"] is True
        closed = asyncio.create_task(wait_closed(silent, within=8))
        # The chatty client pings every half interval while the silent one says nothing.
        while not closed.done():
            await ping(chatty)
            await asyncio.wait({closed}, timeout=0.5)
        code, frames = closed.result()
        assert code == 4008
        assert frames == []
        assert time.monotonic() - opened >= 1.5, "closed before the timeout passed"
        presence = await eventually(lambda: api.presence(silent_user), lambda p: not p["online"],
                                    what="silent user offline")
        assert presence["connections"] == []
        # The client that kept pinging outlived the timeout and still works.
        await ping(chatty)
        assert (await api.presence(chatty_user))["online"] is True
        push_id = await api.push_to([chatty_user, silent_user], "alive")
        assert (await recv_push(chatty))["id"] == push_id
        text = await metrics_text(gw)
        assert metric(text, "gateway_heartbeat_timeouts_total", node="e2e-heartbeat") == 1
        assert metric(text, "gateway_disconnects_total", node="e2e-heartbeat", code="4008") == 1


# --- A node with small limits --------------------------------------------------------------

TIGHT = {
    "GATEWAY_MAX_CONNECTIONS_PER_USER": "2",
    "GATEWAY_MAX_FRAMES_PER_MINUTE": "5",
    "GATEWAY_MAX_BATCH": "3",
    "GATEWAY_MAX_REQUEST_BYTES": "2048",
    "GATEWAY_MAX_PAYLOAD_BYTES": "1024",
}


@pytest.fixture(scope="module")
def tight(start_module_node: NodeStarter) -> GatewayProcess:
    return start_module_node("e2e-tight", **TIGHT)


@pytest.fixture(scope="module")
def tight_key(tight: GatewayProcess) -> str:
    return tight.api_key()


@pytest.fixture
async def tight_api(tight: GatewayProcess, tight_key: str):
    async with Api(tight, tight_key) as client:
        yield client


async def test_cap_evicts_the_oldest_connection_with_4009(tight: GatewayProcess,
                                                          tight_api: Api) -> None:
    user = uid("capped")
    async with session(tight, user) as (c1, w1), session(tight, user) as (c2, w2):
        assert {c["session"] for c in (await tight_api.presence(user))["connections"]} == {
            w1["session"], w2["session"]}
        async with session(tight, user) as (c3, w3):
            code, frames = await wait_closed(c1)
            assert code == 4009
            assert frames == []
            presence = await tight_api.presence(user)
            assert {c["session"] for c in presence["connections"]} == {w2["session"],
                                                                       w3["session"]}
            push_id = await tight_api.push_to([user], "to the two left")
            for ws in (c2, c3):
                assert (await recv_push(ws))["id"] == push_id
                await ping(ws)
            # Another user's connections are not part of this user's cap.
            async with session(tight) as (other, _):
                await ping(other)
            await ping(c2)


async def test_too_many_frames_closes_4029(tight: GatewayProcess) -> None:
    async with session(tight) as (ws, _):
        for _ in range(5):
            await ping(ws)
        await ws.send('{"type":"ping"}')
        code, frames = await wait_closed(ws)
        assert code == 4029
        assert frames == []


async def test_bad_frames_count_towards_the_frame_rate(tight: GatewayProcess) -> None:
    async with session(tight) as (ws, _):
        for _ in range(5):
            await ws.send("not json")
            assert (await recv_json(ws))["code"] == "bad_frame"
        await ws.send("not json")
        assert (await wait_closed(ws))[0] == 4029


async def test_batch_over_the_limit_is_400(tight_api: Api) -> None:
    item = {"users": ["u1"], "data": 1}
    error = assert_error(
        await tight_api.http.post("/api/v1/push/batch", json={"pushes": [item] * 4}), 400
    )
    assert "pushes" in error["fields"]
    response = await tight_api.http.post("/api/v1/push/batch", json={"pushes": [item] * 3})
    assert response.status_code == 202, response.text
    assert [set(r) for r in response.json()["results"]] == [{"id", "status"}] * 3


async def test_request_body_over_the_limit_is_413(tight_api: Api) -> None:
    small = {"users": ["u1"], "data": "x" * 900}
    await tight_api.push(small)
    big = {"users": [f"user{i:05d}" for i in range(200)], "data": 1}  # data small, body big
    assert_error(await tight_api.push(big, expect=None), 413, "payload_too_large")
    # Every item of this batch is fine alone; together they are over the request limit.
    response = await tight_api.http.post("/api/v1/push/batch", json={"pushes": [small] * 3})
    assert_error(response, 413, "payload_too_large")
    response = await tight_api.http.post("/api/v1/push/batch", json={"pushes": [small] * 2})
    assert response.status_code == 202, response.text
    # Without Content-Length (chunked), the limit holds just the same.
    raw = json.dumps(big).encode()

    async def chunks():
        for start in range(0, len(raw), 512):
            yield raw[start:start + 512]

    response = await tight_api.http.post("/api/v1/push", content=chunks(),
                                         headers={"Content-Type": "application/json"})
    assert_error(response, 413, "payload_too_large")


async def test_data_over_the_payload_limit_is_413(tight_api: Api) -> None:
    assert_error(await tight_api.push({"users": ["u1"], "data": "x" * 1023}, expect=None), 413,
                 "payload_too_large")
    await tight_api.push({"users": ["u1"], "data": "x" * 1022})


async def test_tight_node_still_serves(tight: GatewayProcess, tight_api: Api) -> None:
    user = uid("tight-final")
    async with session(tight, user) as (ws, _):
        push_id = await tight_api.push_to([user], "ok")
        assert (await recv_push(ws))["id"] == push_id


# --- API rate limit ------------------------------------------------------------------------

async def test_api_rate_limit_is_429_with_retry_after_per_client(start_node: NodeStarter) -> None:
    gw = start_node("e2e-rate", GATEWAY_API_RATE_PER_SECOND="2")
    async with Api(gw, gw.api_key("fast")) as fast, Api(gw, gw.api_key("calm")) as calm:
        statuses = []
        limited = None
        for _ in range(6):
            response = await fast.http.get("/api/v1/users/u1/presence")
            statuses.append(response.status_code)
            if response.status_code == 429:
                limited = response
                break
        assert limited is not None, f"never limited: {statuses}"
        assert statuses[:2] == [200, 200], statuses
        assert_error(limited, 429, "rate_limited")
        retry_after = limited.headers.get("retry-after")
        assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1
        # The bucket is per client: another client is not limited.
        assert (await calm.http.get("/api/v1/users/u1/presence")).status_code == 200
        # Pushes are limited too, and the limited client recovers.
        assert_error(await fast.push({"users": ["u1"], "data": 1}, expect=None), 429)
        await eventually(lambda: fast.http.get("/api/v1/users/u1/presence"),
                         lambda r: r.status_code == 200, within=int(retry_after) + 3,
                         interval=0.5, what="limited client recovers")


# --- Slow clients --------------------------------------------------------------------------

@each_server
async def test_slow_client_is_closed_and_healthy_client_gets_every_push(
    start_node: NodeStarter, server: str,
) -> None:
    gw = start_node("e2e-slow", server, GATEWAY_MAX_SEND_BUFFER_BYTES="1024",
                    GATEWAY_MAX_PAYLOAD_BYTES="262144")
    slow_user, healthy_user = uid("slow"), uid("healthy")
    pad = "x" * 200_000
    async with Api(gw, gw.api_key()) as api, session(gw, healthy_user, max_size=None) as (
        healthy, _
    ):
        sock = small_rcvbuf_socket()
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (gw.host, gw.port)),
                               5)
        # max_queue=1: once a frame waits unread, the client stops reading its socket.
        slow = await ws_connect(gw, make_token(slow_user), sock=sock, max_queue=1, max_size=None)
        try:
            assert (await recv_json(slow))["type"] == "welcome"
            sent = 0
            for i in range(60):
                push_id = await api.push_to([slow_user, healthy_user], {"i": i, "pad": pad})
                sent += 1
                frame = await recv_push(healthy)
                assert (frame["id"], frame["data"]["i"]) == (push_id, i)
                text = await metrics_text(gw)
                if metric(text, "gateway_disconnects_total", node="e2e-slow", code="4030"):
                    break
            else:
                pytest.fail("the slow client was never closed with 4030")
            # The slow client is gone from the node; the healthy one keeps receiving.
            assert (await api.presence(slow_user))["online"] is False
            for i in range(sent, sent + 3):
                push_id = await api.push_to([slow_user, healthy_user], {"i": i, "pad": "y"})
                frame = await recv_push(healthy)
                assert (frame["id"], frame["data"]["i"]) == (push_id, i)
            await ping(healthy)
            # Reading now, the slow client finds what the kernel held, then the close.
            code, frames = await wait_closed(slow, within=15)
            assert code in (4030, 1006), code
            assert len(frames) < sent
        finally:
            await slow.close()
        text = await metrics_text(gw)
        assert metric(text, "gateway_disconnects_total", node="e2e-slow", code="4030") == 1


# --- Draining ------------------------------------------------------------------------------

@each_server
async def test_round_trip_then_sigterm_drains_with_4012_and_exits_0(
    start_node: NodeStarter, server: str,
) -> None:
    gw = start_node("e2e-drain", server)
    assert gw.proc is not None
    user, other = uid("trip"), uid("other")
    async with Api(gw, gw.api_key()) as api, session(gw, user) as (ws, welcome), session(
        gw, other
    ) as (ws2, _):
        # The round trip: welcome, ping, a targeted push, a broadcast, an ack, a bad token.
        assert welcome["node"] == "e2e-drain"
        assert welcome["heartbeat"] == {"interval": 25, "timeout": 60}
        await ping(ws)
        push_id = await api.push_to([user], {"to": "one"})
        frame = await recv_push(ws)
        assert (frame["id"], frame["data"]) == (push_id, {"to": "one"})
        broadcast = (await api.push({"broadcast": True, "data": "all"})).json()["id"]
        for client in (ws, ws2):
            assert (await recv_push(client))["id"] == broadcast
        await ws.send(json.dumps({"type": "ack", "id": push_id}))
        await eventually(lambda: api.get_push(push_id), lambda s: s["acked"] == 1,
                         what="ack counted")
        refused = await ws_connect(gw, "not-a-token")
        assert (await wait_closed(refused))[0] == 4001
        # Draining: every client gets 4012, then the process exits 0.
        gw.proc.send_signal(signal.SIGTERM)
        for client in (ws, ws2):
            code, frames = await wait_closed(client, within=10)
            assert code == 4012
            assert frames == []
        # Not listening any more while it finishes (as a reconnect storm needs: each
        # attempt would otherwise be accepted only to be closed with 4012).
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection(gw.host, gw.port)
            writer.close()
        returncode = await asyncio.wait_for(asyncio.to_thread(gw.proc.wait), 20)
    assert returncode == 0, gw.log()[-3000:]
    assert "drained 2 connection(s)" in gw.log()
