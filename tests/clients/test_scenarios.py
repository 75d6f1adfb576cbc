"""The client libraries against real nodes (PROTOCOL.md section 8): the Python package, and
gateway.js in Node and in headless Chromium, each through the same scenarios.

- pushes while connected reach the application once, in order, and are acked after its
  handler returned (the gateway counts the acks);
- short-lived tokens are refreshed on the open connection (one welcome, never 4011);
- a kept push another connection left unacked comes back ``redelivered`` and is handled
  and acked once;
- 4010 stops the client (error with the code, then closed; no reconnect); a bare token that
  expires (4011) is reported the same way;
- a node that drains (4012) and comes back: the client reconnects at once and nothing is
  lost or repeated, and pushes made while it is down (``ttl > 0``, taken by another node)
  arrive once, in order, on resume.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from gateway_client import GatewayAPI

from tests.support.client_libs import LibClient, lib_client
from tests.support.clients import eventually, recv_push, session, uid
from tests.support.gateway import GatewayProcess, start_gateway

pytestmark = [pytest.mark.e2e]


def start(kind: str, gw: GatewayProcess, user: str, **kwargs: Any) -> LibClient:
    return lib_client(kind, gw.ws_url, user, page_url=f"{gw.url}/demo/", **kwargs)


def welcomes(c: LibClient) -> int:
    return len(c.of("welcome"))


async def test_pushes_are_handled_once_in_order_acked_and_tokens_refreshed_in_place(
    gw: GatewayProcess, key: str, kind: str,
) -> None:
    user = uid(kind)
    lib = start(kind, gw, user, token_ttl_s=4)
    await lib.start()
    try:
        await lib.wait_for(lambda c: welcomes(c) == 1, what="welcome")
        async with GatewayAPI(gw.url, key=key) as api:
            ids = [(await api.push(users=[user], data={"n": i}, topic="t"))["id"]
                   for i in range(3)]
            await lib.wait_for(lambda c: c.push_ids() == ids, what="three pushes in order")
            assert [e["data"] for e in lib.of("push")] == [{"n": 0}, {"n": 1}, {"n": 2}]
            for push_id in ids:
                await eventually(lambda p=push_id: api.status(p), lambda s: s["acked"] == 1,
                                 within=10, what=f"{push_id} acked once")
            # Real tokens expiring on a real node: 2.5 lifetimes of 4 s on one connection.
            tokens = len(lib.of("token"))
            await asyncio.sleep(10)
            assert welcomes(lib) == 1, lib.events
            assert len(lib.of("token")) >= tokens + 2, lib.events
            assert 4011 not in lib.error_codes(), lib.events
            late = (await api.push(users=[user], data="late"))["id"]
            await lib.wait_for(lambda c: c.push_ids() == [*ids, late], what="a push after")
            assert welcomes(lib) == 1
    finally:
        await lib.stop()


async def test_4010_stops_and_reports(gw: GatewayProcess, key: str, kind: str) -> None:
    user = uid(kind)
    lib = start(kind, gw, user)
    await lib.start()
    try:
        await lib.wait_for(lambda c: welcomes(c) == 1, what="welcome")
        async with GatewayAPI(gw.url, key=key) as api:
            await api.disconnect(user, reason="account closed")
            await lib.wait_for(lambda c: bool(c.of("stopped")), what="stopped")
            assert lib.of("stopped")[-1]["closeCode"] == 4010
            kinds = [(e["kind"], e.get("code", e.get("state"))) for e in lib.events]
            assert kinds.index(("error", 4010)) < kinds.index(("state", "closed")), kinds
            await asyncio.sleep(2)  # long enough for the first reconnect a loop would make
            assert welcomes(lib) == 1, lib.events
            assert (await api.presence(user))["online"] is False
    finally:
        await lib.stop()


async def test_a_bare_token_that_expires_is_reported_like_4010(
    gw: GatewayProcess, kind: str,
) -> None:
    user = uid(kind)
    lib = start(kind, gw, user, bare_ttl_s=3)
    await lib.start()
    try:
        await lib.wait_for(lambda c: welcomes(c) == 1, what="welcome")
        await lib.wait_for(lambda c: bool(c.of("stopped")), within=10, what="stopped")
        assert lib.of("stopped")[-1]["closeCode"] == 4011
        assert 4011 in lib.error_codes()
        await asyncio.sleep(1.5)
        assert welcomes(lib) == 1 and not lib.of("token"), lib.events
    finally:
        await lib.stop()


# --- drain (4012) and restart ----------------------------------------------------------------

async def drain_and_restart(tmp_path: Path, kind: str, *, gap: bool) -> None:
    """Node ``a`` drains and starts again on the same port and data; node ``b`` shares the
    data (and takes the gap's pushes, ``gap``: kept, they reach the user only through the
    resume, b's broker being its own). The application must see every push once, in
    order."""
    shared = tmp_path / "shared"
    shared.mkdir()
    env = {"GATEWAY_DATA_DIR": str(shared)}
    a = start_gateway(tmp_path, node_id="a", env=env)
    nodes = [a]
    lib: LibClient | None = None
    try:
        b = start_gateway(tmp_path, node_id="b", env=env, migrate=False)
        nodes.append(b)
        key = a.api_key("drain")
        user = uid(kind)
        lib = start(kind, a, user)
        await lib.start()
        await lib.wait_for(lambda c: welcomes(c) == 1, what="welcome")
        expected: list[str] = []
        async with GatewayAPI(a.url, key=key) as api_a:
            for i in range(3):
                expected.append((await api_a.push(users=[user], data=f"before-{i}", ttl=60))["id"])
            await lib.wait_for(lambda c: c.push_ids() == expected, what="pushes before")
        assert a.stop() == 0, a.log()[-3000:]  # SIGTERM: drains with 4012, exits 0
        if gap:
            async with GatewayAPI(b.url, key=key) as api_b:
                for i in range(3):
                    expected.append(
                        (await api_b.push(users=[user], data=f"gap-{i}", ttl=60))["id"])
        a2 = start_gateway(tmp_path, node_id="a", env=env, port=a.port, migrate=False)
        nodes.append(a2)
        await lib.wait_for(lambda c: welcomes(c) == 2, within=40, what="reconnected")
        # The client resumed from the last push its handler returned from.
        recovery = lib.of("welcome")[1]["recovery"]
        assert recovery is not None and recovery["since"] == expected[2], lib.events
        assert recovery["complete"] is True, recovery
        async with GatewayAPI(a2.url, key=key) as api_a2:
            for i in range(3):
                expected.append((await api_a2.push(users=[user], data=f"after-{i}", ttl=60))["id"])
            await lib.wait_for(lambda c: len(c.push_ids()) >= len(expected), within=15,
                               what="every push")
        await asyncio.sleep(0.5)  # a repeat would show up by now
        assert lib.push_ids() == expected, lib.events
    finally:
        if lib is not None:
            await lib.stop()
        for node in nodes:
            node.stop()


async def test_drain_4012_reconnects_and_loses_or_repeats_nothing(
    tmp_path: Path, kind: str,
) -> None:
    await drain_and_restart(tmp_path, kind, gap=False)


async def test_pushes_made_while_the_node_is_down_arrive_once_on_resume(
    tmp_path: Path, kind: str,
) -> None:
    await drain_and_restart(tmp_path, kind, gap=True)


async def test_a_kept_push_left_unacked_comes_back_redelivered_and_is_handled_once(
    gw: GatewayProcess, key: str, kind: str,
) -> None:
    user = uid(kind)
    async with GatewayAPI(gw.url, key=key) as api:
        # Another client of the user got the push and went away without acking it.
        async with session(gw, user) as (ws, _):
            push_id = (await api.push(users=[user], data="again", ttl=60))["id"]
            assert (await recv_push(ws))["id"] == push_id
        # The node writes per-recipient states once a second: wait for "delivered".
        await eventually(lambda: api.recipients(push_id),
                         lambda r: [x["state"] for x in r["results"]] == ["delivered"],
                         within=10, what="delivered, not acked")
        lib = start(kind, gw, user)
        await lib.start()
        try:
            await lib.wait_for(lambda c: c.push_ids() == [push_id], what="the kept push")
            assert lib.of("push")[0]["redelivered"] is True, lib.events
            await eventually(lambda: api.recipients(push_id),
                             lambda r: [x["state"] for x in r["results"]] == ["acked"],
                             within=10, what="acked by the library")
            await asyncio.sleep(0.5)
            assert lib.push_ids() == [push_id]
        finally:
            await lib.stop()
