"""Chaos against a real node: nothing a client sends, and no ordinary churn, may stop it.

Each test here reproduces a finding of the hardening issue against a real ``rungateway``
process under each server, and then proves that the node still delivers: a bystander,
connected the whole time, must get a push sent after the chaos.

Every loop is bounded in count and in time and stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

import pytest
import websockets

from tests.support.clients import (
    Api,
    eventually,
    make_token,
    metric,
    metrics_text,
    ping,
    recv_json,
    recv_push,
    session,
    uid,
    ws_connect,
)
from tests.support.gateway import SERVERS, GatewayProcess

NodeStarter = Callable[..., GatewayProcess]
each_server = pytest.mark.parametrize("server", SERVERS)

#: The churn soak's bounds: it stops after this long or this many connect/close cycles.
SOAK_S = 12.0
SOAK_MAX_CYCLES = 3000
CHURNERS = 10
BROADCASTS_PER_S = 10


async def _churn(gw: GatewayProcess, stop_at: float, counter: list[int]) -> None:
    """One churning client: connect, maybe read a frame, leave abruptly or politely."""
    user = uid("churn")
    token = make_token(user)
    n = 0
    while time.monotonic() < stop_at and counter[0] < SOAK_MAX_CYCLES:
        n += 1
        try:
            ws = await ws_connect(gw, token)
        except (OSError, websockets.WebSocketException, TimeoutError):
            continue
        counter[0] += 1
        try:
            with contextlib.suppress(TimeoutError, websockets.WebSocketException):
                await asyncio.wait_for(ws.recv(), 0.05 * (n % 3))
        finally:
            if n % 2:
                # Drop the TCP connection without a close handshake, as a phone that loses
                # its network does: pushes then meet a connection that is closing.
                ws.transport.abort()
            else:
                await ws.close()


async def _broadcasts(api: Api, stop_at: float, accepted: list[str]) -> None:
    while time.monotonic() < stop_at:
        response = await api.push({"broadcast": True, "data": {"n": len(accepted)}})
        accepted.append(response.json()["id"])
        await asyncio.sleep(1 / BROADCASTS_PER_S)


@each_server
async def test_churn_while_broadcasts_flow_never_stops_delivery(
    start_node: NodeStarter, server: str
) -> None:
    gw = start_node(f"churn-{server}", server=server)
    async with Api(gw, gw.api_key()) as api, session(gw) as (bystander, welcome):
        stop_at = time.monotonic() + SOAK_S
        cycles = [0]
        accepted: list[str] = []

        async def read_bystander() -> int:
            got = 0
            while time.monotonic() < stop_at:
                with contextlib.suppress(TimeoutError):
                    frame = json.loads(await asyncio.wait_for(bystander.recv(), 0.5))
                    if frame["type"] == "push":
                        got += 1
                        await bystander.send(json.dumps({"type": "ack", "id": frame["id"]}))
                    continue
                await bystander.send('{"type":"ping"}')
            return got

        got, *_ = await asyncio.gather(
            read_bystander(), _broadcasts(api, stop_at, accepted),
            *(_churn(gw, stop_at, cycles) for _ in range(CHURNERS)),
        )
        assert cycles[0] > 100, f"the soak churned only {cycles[0]} connections"
        assert got > 0 and accepted

        # After the chaos: the node still delivers to the bystander, which was there all along.
        with contextlib.suppress(TimeoutError):
            while True:  # drain what is still in flight
                await asyncio.wait_for(bystander.recv(), 0.5)
        push_id = await api.push_to([welcome["user"]], {"after": "churn"})
        frame = await recv_push(bystander, within=5)
        assert frame["id"] == push_id
        health = await api.http.get("/healthz")
        assert health.status_code == 200, health.text


NESTED_FRAME = "[" * 2000 + "]" * 2000


@each_server
async def test_a_deeply_nested_frame_is_a_bad_frame_and_the_node_keeps_delivering(
    start_node: NodeStarter, server: str
) -> None:
    gw = start_node(f"nested-{server}", server=server)
    async with Api(gw, gw.api_key()) as api, session(gw) as (attacker, attacker_welcome), \
            session(gw) as (bystander, bystander_welcome):
        for text in (NESTED_FRAME, "{" + '"a":{' * 600 + "}" * 601, '{"type": 1e999}',
                     '{"type": "ack", "id": "\\ud800"}', '{"type": "' + "\\ud800" * 100 + '"}'):
            await attacker.send(text)
            error = await recv_json(attacker)
            assert error["type"] == "error" and error["code"] in ("bad_frame", "bad_ack"), error
        await ping(attacker)  # the connection stays
        # The attacker's session still gets its pushes, and so does everyone else.
        push_id = await api.push_to([attacker_welcome["user"], bystander_welcome["user"]], 1)
        assert (await recv_push(attacker))["id"] == push_id
        assert (await recv_push(bystander))["id"] == push_id
        # The node writes its delivery counts to the push log once a second.
        await eventually(lambda: api.get_push(push_id), lambda s: s["delivered"] == 2,
                         what="both deliveries counted on the push log")


@each_server
async def test_acks_follow_the_contract(start_node: NodeStarter, server: str) -> None:
    # A frame budget far below the number of pushes: valid acks must not count toward it.
    gw = start_node(f"acks-{server}", server=server, GATEWAY_MAX_FRAMES_PER_MINUTE="20")
    async with Api(gw, gw.api_key()) as api, session(gw) as (ws, welcome), \
            session(gw) as (stranger, _):
        user = welcome["user"]
        ids = [await api.push_to([user], i) for i in range(60)]
        for push_id in ids:
            assert (await recv_push(ws))["id"] == push_id
            await ws.send(json.dumps({"type": "ack", "id": push_id}))
        await ping(ws)  # not closed with 4029 after 60 acks with a budget of 20 frames

        # A repeat ack, an ack of a push this session never got: bad_ack, and not counted.
        await ws.send(json.dumps({"type": "ack", "id": ids[0]}))
        error = await recv_json(ws)
        assert error["type"] == "error" and error["code"] == "bad_ack", error
        await stranger.send(json.dumps({"type": "ack", "id": ids[1]}))
        assert (await recv_json(stranger))["code"] == "bad_ack"

        status = await eventually(lambda: api.get_push(ids[1]), lambda s: s["acked"] == 1,
                                  what="the ack reaches the push log")
        assert status["acked"] == 1 and status["delivered"] == 1, status
        assert (await api.get_push(ids[0]))["acked"] == 1
        # Each bad ack counts as a frame: past the budget the client is closed with 4029.
        for _ in range(25):
            with contextlib.suppress(websockets.ConnectionClosed):
                await stranger.send(json.dumps({"type": "ack", "id": ids[2]}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(stranger.recv(), 5)
        assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4029


async def test_the_delivery_loop_is_supervised_and_reported(start_node: NodeStarter) -> None:
    gw = start_node("supervised")
    text = await metrics_text(gw)
    assert metric(text, "gateway_loop_restarts_total") == 0
    assert 'gateway_loop_running{' in text
    assert metric(text, "gateway_loop_running", loop="consume") == 1
