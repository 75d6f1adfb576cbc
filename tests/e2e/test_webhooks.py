"""Webhooks end to end (PROTOCOL.md section 7): real nodes, a real local receiver
(``tests.support.receiver``), ``GATEWAY_WEBHOOK_ALLOW_PRIVATE=1``.

Sessions are recorded every second (``GATEWAY_RECORD_INTERVAL=1``) and the presence
debounce is 1 s, so that presence events follow within a few seconds. The retry test reads
the spacing of real attempts (1 s, then 2 s): the backoff itself is covered with an
injected clock in tests/unit/test_webhooks_delivery.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import (
    Api,
    eventually,
    metric,
    metrics_text,
    recv_push,
    session,
    uid,
)
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.receiver import Call, Receiver

pytestmark = pytest.mark.e2e

ENV = {"GATEWAY_WEBHOOK_ALLOW_PRIVATE": "1", "GATEWAY_RECORD_INTERVAL": "1",
       "GATEWAY_PRESENCE_DEBOUNCE": "1", "GATEWAY_SETTLE_AFTER": "1"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture(scope="module")
def hooknode(start_module_node: Any) -> GatewayProcess:
    return start_module_node("e2e-webhooks", **ENV)


async def register(api: Api, url: str, events: list[str]) -> dict[str, Any]:
    response = await api.http.post("/api/v1/webhooks", json={"url": url, "events": events})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def calls(receiver: Receiver, path: str, n: int, *, within: float = 15,
                of_user: str | None = None) -> list[Call]:
    async def got() -> list[Call]:
        found = receiver.calls_to(path)
        if of_user is not None:
            found = [c for c in found if c.event["data"].get("user") == of_user]
        return found
    return await eventually(got, lambda found: len(found) >= n, within=within,
                            what=f"{n} call(s) to {path}")


async def test_presence_events_are_signed_and_sent_once_per_transition(
        hooknode: GatewayProcess, receiver: Receiver) -> None:
    path = f"/{uid('p')}"
    async with Api(hooknode, hooknode.api_key()) as api:
        endpoint = await register(api, receiver.url(path), ["user.online", "user.offline"])
        listed = (await api.http.get("/api/v1/webhooks")).json()["results"]
        assert [e["id"] for e in listed] == [endpoint["id"]] and "secret" not in listed[0]
    user = uid()
    async with session(hooknode, user), session(hooknode, user):
        (online,) = await calls(receiver, path, 1, of_user=user)
    (_, offline) = await calls(receiver, path, 2, of_user=user)
    for call in (online, offline):
        assert call.verified(endpoint["secret"]), call.headers
        assert call.headers["gateway-event-id"] == call.event["id"]
        assert call.headers["content-type"] == "application/json"
    assert online.event["type"] == "user.online"
    assert online.event["data"]["sessions"] in (1, 2)
    assert offline.event["type"] == "user.offline"
    assert offline.event["data"] == {"user": user, "at": offline.event["data"]["at"],
                                     "sessions": 0}
    await asyncio.sleep(2.5)  # nothing more comes
    assert len(receiver.calls_to(path)) == 2


async def test_a_reconnect_within_the_debounce_sends_nothing(
        hooknode: GatewayProcess, receiver: Receiver) -> None:
    path = f"/{uid('r')}"
    async with Api(hooknode, hooknode.api_key()) as api:
        await register(api, receiver.url(path), ["user.online", "user.offline"])
    user = uid()
    async with session(hooknode, user):
        await calls(receiver, path, 1, of_user=user)
    async with session(hooknode, user):
        await asyncio.sleep(2.5)
    assert [c.event["type"] for c in receiver.calls_to(path)] == ["user.online"]


async def test_500s_are_retried_with_backoff(hooknode: GatewayProcess,
                                             receiver: Receiver) -> None:
    path = f"/{uid('f')}"
    receiver.answer(path, 500, 503)
    async with Api(hooknode, hooknode.api_key()) as api:
        await register(api, receiver.url(path), ["user.online"])
    user = uid()
    async with session(hooknode, user):
        got = await calls(receiver, path, 3, of_user=user, within=20)
    assert len({c.event["id"] for c in got}) == 1  # the same event, three times
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    assert 0.9 <= gaps[0] < 1.8 and 1.9 <= gaps[1] < 3.0, gaps
    text = await metrics_text(hooknode)
    assert metric(text, "gateway_webhook_calls_total", result="status") >= 2
    assert metric(text, "gateway_webhook_calls_total", result="ok") >= 1


async def test_a_hanging_endpoint_delays_no_other(hooknode: GatewayProcess,
                                                  receiver: Receiver) -> None:
    slow, fast = f"/{uid('slow')}", f"/{uid('fast')}"
    receiver.hang(slow)
    async with Api(hooknode, hooknode.api_key()) as api:
        await register(api, receiver.url(slow), ["user.online", "user.offline"])
        await register(api, receiver.url(fast), ["user.online", "user.offline"])
    users = [uid() for _ in range(20)]
    started = time.monotonic()
    for user in users:  # 40 events: more than the slow lane's concurrency
        async with session(hooknode, user):
            pass
    await calls(receiver, fast, 40, within=15)
    # Sessions are recorded within 1 s, the debounce is 1 s: the fast endpoint has all it
    # was sent well before the hanging one's first call times out (10 s).
    assert time.monotonic() - started < 9
    assert len(receiver.calls_to(slow)) >= 1


async def test_another_app_and_another_client_get_nothing(
        hooknode: GatewayProcess, receiver: Receiver) -> None:
    mine, theirs = f"/{uid('m')}", f"/{uid('t')}"
    bank = f"bank{uid('')[-6:]}"
    hooknode.manage("createapp", bank)
    bank_key = hooknode.manage("createapikey", f"{bank}-api", "--app", bank).strip()
    async with Api(hooknode, hooknode.api_key()) as api, Api(hooknode, bank_key) as other:
        await register(api, receiver.url(mine), ["user.online"])
        await register(other, receiver.url(theirs), ["user.online"])
        mine_id = (await api.http.get("/api/v1/webhooks")).json()["results"][0]["id"]
        assert (await other.http.delete(f"/api/v1/webhooks/{mine_id}")).status_code == 404
    user = uid()
    async with session(hooknode, user):
        await calls(receiver, mine, 1, of_user=user)
        await asyncio.sleep(1.5)
    assert [c for c in receiver.calls_to(theirs) if c.event["data"]["user"] == user] == []


async def test_pending_events_survive_a_killed_node(tmp_path: Path) -> None:
    """The receiver is down; the node is SIGKILLed with events pending; restarted with the
    receiver back, it sends them (its leases given back at start)."""
    receiver = Receiver()
    gw = start_gateway(tmp_path, node_id="e2e-hooks-kill", env=ENV)
    try:
        async with Api(gw, gw.api_key()) as api:
            endpoint = await register(api, receiver.url("/k"),
                                      ["user.online", "user.offline"])
        user = uid()
        async with session(gw, user):
            await eventually(lambda: metrics_text(gw), lambda text: metric(
                text, "gateway_webhook_calls_total", result="error") >= 1, within=15,
                what="a call to the receiver that is down")
        await asyncio.sleep(3)  # the offline event is stored too
        assert metric(await metrics_text(gw), "gateway_webhook_calls_total", result="ok") == 0
        gw.kill()
        receiver.start()
        gw = start_gateway(tmp_path, node_id="e2e-hooks-kill", env=ENV, migrate=False)
        got = await calls(receiver, "/k", 2, within=25, of_user=user)
        # No order between events (a retried one may come after a newer one): the data's
        # ``at`` orders them.
        assert sorted(c.event["type"] for c in got) == ["user.offline", "user.online"]
        online, _offline = sorted(got, key=lambda c: c.event["data"]["at"])
        assert online.event["type"] == "user.online"
        assert all(c.verified(endpoint["secret"]) for c in got)
    finally:
        gw.stop()
        receiver.stop()


async def test_push_settled_with_each_users_outcome_to_the_pushing_client_only(
        hooknode: GatewayProcess, receiver: Receiver) -> None:
    mine, theirs = f"/{uid('s')}", f"/{uid('o')}"
    key = hooknode.api_key()
    async with Api(hooknode, key) as api, Api(hooknode, hooknode.api_key()) as other:
        endpoint = await register(api, receiver.url(mine), ["push.settled"])
        await register(other, receiver.url(theirs), ["push.settled"])
        u1, u2 = uid(), uid()
        async with session(hooknode, u1) as (ws, _):
            live = await api.push_to([u1, u2], {"n": 1})
            frame = await recv_push(ws)
            await ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
            kept = await api.push_to([u1], {"n": 2}, ttl=60)
            frame = await recv_push(ws)
            await ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
            got = await calls(receiver, mine, 2, within=20)
    by_push = {c.event["data"]["push"]: c for c in got}
    assert set(by_push) == {live, kept}
    assert all(c.verified(endpoint["secret"]) for c in got)
    assert by_push[live].event["data"]["recipients"] == {
        "acked": [u1], "delivered": [], "offline": [u2], "expired": [], "dropped": []}
    assert by_push[live].event["data"]["targets"] == 2
    # The kept push settled at its only user's ack, long before its ttl (60 s).
    assert by_push[kept].event["data"]["recipients"]["acked"] == [u1]
    await asyncio.sleep(1.5)
    assert receiver.calls_to(theirs) == []
    assert len(receiver.calls_to(mine)) == 2
