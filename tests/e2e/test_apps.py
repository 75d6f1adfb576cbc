"""Apps and key scopes end to end (PROTOCOL.md section 9), against real nodes.

Two apps, ``shop`` and ``bank``, share one node; their users have the same ids. Every rule
checked for one app is also checked from the other app's side: it cannot see or touch it.
The delivery path runs under both servers (``SERVERS``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

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
    recv_json,
    recv_push,
    uid,
    wait_closed,
    ws_connect,
)
from tests.support.gateway import SERVERS, GatewayProcess

pytestmark = pytest.mark.e2e

# Tests of the API alone run under Daphne only (``parametrize("node", ["daphne"])``); what
# crosses the WebSocket (handshake, delivery, closes, frames) runs under both servers.


def app_token(user: str, app: str, secret: str, *, ttl: int = 600, kid: Any = "") -> str:
    """A client token of ``app`` (``kid`` = the app unless given; None: no header)."""
    now = int(time.time())
    header = {} if kid is None else {"kid": kid or app}
    return jwt.encode({"sub": user, "iat": now, "exp": now + ttl}, secret, algorithm="HS256",
                      headers=header)


class Tenant:
    """An app on a node: its secret and an all-scopes key."""

    def __init__(self, gw: GatewayProcess, app: str, *options: str) -> None:
        self.app = app
        self.secret = gw.manage("createapp", app, *options).splitlines()[-1]
        self.key = gw.manage("createapikey", f"{app}-{uid()}", "--app", app).strip()

    def token(self, user: str, **kwargs: Any) -> str:
        return app_token(user, self.app, self.secret, **kwargs)


async def connect(gw: GatewayProcess, token: str) -> tuple[Any, dict[str, Any]]:
    ws = await ws_connect(gw, token)
    welcome = await recv_json(ws)
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


async def no_frame(ws: Any, within: float = 0.5) -> None:
    """Nothing arrives within ``within`` s (what the other app's session must see)."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), within)


@pytest.fixture(scope="module", params=SERVERS)
def node(request: pytest.FixtureRequest, start_module_node: Any) -> GatewayProcess:
    # A beat a second: the apps (secrets, limits) are reloaded at each beat.
    return start_module_node(f"e2e-apps-{request.param}", server=request.param,
                             GATEWAY_RECORD_INTERVAL="1")


@pytest.fixture(scope="module")
def shop(node: GatewayProcess) -> Tenant:
    return Tenant(node, f"shop-{node.node_id[-6:]}")


@pytest.fixture(scope="module")
def bank(node: GatewayProcess) -> Tenant:
    return Tenant(node, f"bank-{node.node_id[-6:]}")


async def test_the_same_user_id_in_two_apps_is_two_users(node: GatewayProcess, shop: Tenant,
                                                          bank: Tenant) -> None:
    user = uid()
    default_key = node.api_key()
    shop_ws, shop_welcome = await connect(node, shop.token(user))
    bank_ws, _ = await connect(node, bank.token(user))
    default_ws, _ = await connect(node, make_token(user))
    try:
        assert shop_welcome["user"] == user
        async with Api(node, shop.key) as shop_api, Api(node, bank.key) as bank_api, \
                Api(node, default_key) as default_api:
            # A targeted push reaches the user of its app only.
            push_id = await shop_api.push_to([user], {"for": "shop"})
            frame = await recv_push(shop_ws)
            assert (frame["id"], frame["data"]) == (push_id, {"for": "shop"})
            await no_frame(bank_ws)
            await no_frame(default_ws, 0.1)
            # A broadcast reaches its app's users only.
            await bank_api.push({"broadcast": True, "data": "bank-wide"})
            assert (await recv_push(bank_ws))["data"] == "bank-wide"
            await no_frame(shop_ws)
            await no_frame(default_ws, 0.1)
            await default_api.push({"broadcast": True, "data": "v1-wide"})
            assert (await recv_push(default_ws))["data"] == "v1-wide"
            await no_frame(shop_ws, 0.2)
            await no_frame(bank_ws, 0.1)
            # Another app's push id does not exist for a key.
            assert (await shop_api.get_push(push_id))["id"] == push_id
            assert_error(await bank_api.http.get(f"/api/v1/push/{push_id}"), 404, "not_found")
            # Presence answers for the caller's app.
            shop_presence = await shop_api.presence(user)
            bank_presence = await bank_api.presence(user)
            assert [c["session"] for c in shop_presence["connections"]] == \
                [shop_welcome["session"]]
            assert len(bank_presence["connections"]) == 1
            assert bank_presence["connections"][0]["session"] != shop_welcome["session"]
            # Disconnect closes the caller's app's user only.
            await bank_api.disconnect(user, "bank only")
            code, _ = await wait_closed(bank_ws)
            assert code == 4010
            await shop_api.push_to([user], "still here")
            assert (await recv_push(shop_ws))["data"] == "still here"
    finally:
        for ws in (shop_ws, bank_ws, default_ws):
            await ws.close()


@pytest.mark.parametrize("case", ["other app's secret", "unknown kid", "no kid",
                                  "kid of another app", "kid no app can have"])
async def test_a_token_not_signed_by_its_apps_secret_gets_4001(node: GatewayProcess,
                                                               shop: Tenant, bank: Tenant,
                                                               case: str) -> None:
    token = {
        "other app's secret": app_token("u", shop.app, bank.secret),
        "unknown kid": app_token("u", "nosuchapp", shop.secret),
        "no kid": app_token("u", shop.app, shop.secret, kid=None),
        "kid of another app": app_token("u", shop.app, shop.secret, kid=bank.app),
        "kid no app can have": app_token("u", shop.app, shop.secret, kid="Not An App"),
    }[case]
    ws = await ws_connect(node, token)
    code, frames = await wait_closed(ws)
    assert (code, frames) == (4001, [])


@pytest.mark.parametrize("node", ["daphne"], indirect=True)  # the API: one server is enough
async def test_kid_default_is_the_same_as_no_kid(node: GatewayProcess) -> None:
    from tests.support.gateway import JWT_SECRET
    user = uid()
    ws, _ = await connect(node, app_token(user, "default", JWT_SECRET))
    try:
        async with Api(node, node.api_key()) as api:
            await api.push_to([user], 1)
            assert (await recv_push(ws))["data"] == 1
    finally:
        await ws.close()


@pytest.mark.parametrize("node", ["daphne"], indirect=True)  # the API: one server is enough
async def test_tokens_endpoint_mints_for_the_callers_app(node: GatewayProcess, shop: Tenant,
                                                         bank: Tenant) -> None:
    user = uid()
    async with Api(node, shop.key) as shop_api, Api(node, bank.key) as bank_api:
        response = await shop_api.http.post("/api/v1/tokens", json={"user": user, "ttl": 120})
        assert response.status_code == 201, response.text
        token = response.json()["token"]
        assert jwt.get_unverified_header(token)["kid"] == shop.app
        ws, _ = await connect(node, token)
        try:
            await bank_api.push_to([user], "bank")
            await shop_api.push_to([user], "shop")
            assert (await recv_push(ws))["data"] == "shop"
        finally:
            await ws.close()


@pytest.mark.parametrize("node", ["daphne"], indirect=True)  # the API: one server is enough
async def test_scopes_refuse_what_a_key_may_not_do_with_403(node: GatewayProcess,
                                                            shop: Tenant) -> None:
    push_only = node.manage("createapikey", f"p-{uid()}", "--app", shop.app,
                            "--scopes", "push").strip()
    presence_only = node.manage("createapikey", f"r-{uid()}", "--app", shop.app,
                                "--scopes", "presence").strip()
    async with Api(node, push_only) as pusher, Api(node, presence_only) as watcher:
        push_id = await pusher.push_to(["u"], 1)
        assert (await pusher.get_push(push_id))["id"] == push_id
        for response, scope in [
            (await pusher.http.get("/api/v1/users/u/presence"), "presence"),
            (await pusher.http.post("/api/v1/users/u/disconnect", json={}), "manage"),
            (await pusher.http.post("/api/v1/tokens", json={"user": "u"}), "manage"),
            (await watcher.push({"users": ["u"], "data": 1}, expect=None), "push"),
            (await watcher.http.post("/api/v1/push/batch",
                                     json={"pushes": [{"users": ["u"], "data": 1}]}), "push"),
            (await watcher.http.get(f"/api/v1/push/{push_id}"), "push"),
        ]:
            body = assert_error(response, 403, "forbidden")
            assert body["detail"] == f"needs scope {scope}"
        assert (await watcher.presence("u"))["online"] is False


async def test_an_apps_connection_limit_closes_the_next_with_4003(node: GatewayProcess) -> None:
    capped = Tenant(node, f"capped-{uid()[-6:]}", "--max-connections", "2")
    free = Tenant(node, f"free-{uid()[-6:]}")
    first = [await connect(node, capped.token(uid())) for _ in range(2)]
    try:
        ws = await ws_connect(node, capped.token(uid()))
        code, frames = await wait_closed(ws)
        assert (code, frames) == (4003, [])
        # Another app is not held by it.
        other, _ = await connect(node, free.token(uid()))
        await other.close()
        # A freed place is taken again.
        await first.pop()[0].close()
        again = await eventually(lambda: _opens(node, capped.token(uid())), bool,
                                 what="a connection once one of the two closed")
        await again.close()
    finally:
        for ws, _ in first:
            await ws.close()


async def _opens(gw: GatewayProcess, token: str) -> Any:
    """The connection if ``token`` gets a welcome; None if it is closed instead."""
    ws = await ws_connect(gw, token)
    try:
        frame = await asyncio.wait_for(ws.recv(), 5)
    except websockets.ConnectionClosed:
        return None
    if '"welcome"' in str(frame):
        return ws
    await ws.close()
    return None


@pytest.mark.parametrize("node", ["daphne"], indirect=True)  # the API: one server is enough
async def test_an_apps_push_rate_answers_429_past_it(node: GatewayProcess) -> None:
    slow = Tenant(node, f"slow-{uid()[-6:]}", "--pushes-per-second", "2")
    fast = Tenant(node, f"fast-{uid()[-6:]}")
    async with Api(node, slow.key) as slow_api, Api(node, fast.key) as fast_api:
        answers = [(await slow_api.push({"users": ["u"], "data": i}, expect=None))
                   for i in range(6)]
        statuses = [a.status_code for a in answers]
        assert statuses[:2] == [202, 202], statuses
        assert 429 in statuses, statuses
        refused = answers[statuses.index(429)]
        assert_error(refused, 429, "rate_limited")
        assert int(refused.headers["Retry-After"]) >= 1
        # The other app's pushes are not held back.
        for i in range(6):
            await fast_api.push({"users": ["u"], "data": i})


async def test_rotation_keeps_old_tokens_until_the_previous_secret_is_dropped(
    node: GatewayProcess,
) -> None:
    tenant = Tenant(node, f"rot-{uid()[-6:]}")
    old_secret = tenant.secret
    user = uid()
    # A live connection with an old-secret token that expires in 4 s.
    live, _ = await connect(node, tenant.token(user, ttl=4))
    new_secret = node.manage("rotateappsecret", tenant.app).splitlines()[-1]
    assert new_secret != old_secret
    new_token = app_token(user, tenant.app, new_secret)
    old_token = app_token(user, tenant.app, old_secret)
    # Both work once the node has the rotation (its next beat).
    ws = await eventually(lambda: _opens(node, new_token), bool, what="new secret accepted")
    await ws.close()
    ws, _ = await connect(node, old_token)
    await ws.close()
    node.manage("rotateappsecret", tenant.app, "--drop-previous")
    await eventually(lambda: _closed_with(node, old_token), lambda code: code == 4001,
                     what="old secret refused after the drop")
    ws, _ = await connect(node, new_token)
    await ws.close()
    # The live connection is not cut by the drop; it ends at its token's expiry, with 4011.
    code, _ = await wait_closed(live, within=8)
    assert code == 4011


async def _closed_with(gw: GatewayProcess, token: str) -> int | None:
    ws = await ws_connect(gw, token)
    try:
        frame = await asyncio.wait_for(ws.recv(), 5)
    except websockets.ConnectionClosed:
        return ws.close_code
    await ws.close()
    return None if '"welcome"' in str(frame) else ws.close_code


async def test_refresh_moves_the_expiry_and_a_bad_token_is_refused(node: GatewayProcess,
                                                                   shop: Tenant,
                                                                   bank: Tenant) -> None:
    user = uid()
    ws, _ = await connect(node, shop.token(user, ttl=3))
    try:
        for bad in (bank.token(user), shop.token("someone-else"), "junk"):
            await ws.send(f'{{"type":"refresh","token":"{bad}"}}')
            frame = await recv_json(ws)
            assert (frame["type"], frame["code"]) == ("error", "bad_token"), frame
        await ws.send(f'{{"type":"refresh","token":"{shop.token(user, ttl=60)}"}}')
        frame = await recv_json(ws)
        assert frame["type"] == "refreshed" and frame["exp"] > time.time() + 50, frame
        await asyncio.sleep(4)  # past the first token's exp: the refreshed one holds
        await ws.send('{"type":"ping"}')
        assert (await recv_json(ws))["type"] == "pong"
    finally:
        await ws.close()


@pytest.mark.parametrize("node", ["daphne"], indirect=True)  # the API: one server is enough
async def test_metrics_count_connections_and_pushes_per_app(node: GatewayProcess,
                                                            shop: Tenant, bank: Tenant) -> None:
    before = await metrics_text(node)
    ws, _ = await connect(node, shop.token(uid()))
    try:
        async with Api(node, shop.key) as api:
            await api.push_to(["nobody"], 1)
        text = await eventually(
            lambda: metrics_text(node),
            lambda t: metric(t, "gateway_connections", app=shop.app) >= 1,
            what="gateway_connections{app=shop}")
        for name, labels in [("gateway_connects_total", {}),
                             ("gateway_pushes_total", {"status": "accepted"})]:
            assert metric(text, name, app=shop.app, **labels) == \
                metric(before, name, app=shop.app, **labels) + 1, name
            assert metric(text, name, app=bank.app, **labels) == \
                metric(before, name, app=bank.app, **labels), name
    finally:
        await ws.close()


@pytest.mark.parametrize("node", ["daphne"], indirect=True)  # the API: one server is enough
def test_createapp_prints_its_secret_last_and_refuses_bad_ids(node: GatewayProcess) -> None:
    out = node.manage("createapp", f"cli-{uid()[-6:]}", "--name", "CLI")
    assert len(out.splitlines()[-1]) >= 40
    for bad in ("Shop", "-x", "a" * 65, "default"):
        with pytest.raises(RuntimeError):
            node.manage("createapp", bad)
    with pytest.raises(RuntimeError, match="no app"):
        node.manage("createapikey", f"k-{uid()}", "--app", "nosuchapp")
    with pytest.raises(RuntimeError, match="unknown scope"):
        node.manage("createapikey", f"k-{uid()}", "--scopes", "push,admin")


@pytest.mark.parametrize("node", ["daphne"], indirect=True)  # the API: one server is enough
def test_the_default_app_still_serves_v1_keys_and_tokens(node: GatewayProcess) -> None:
    key = node.api_key()
    response = httpx.post(f"{node.url}/api/v1/tokens", json={"user": "v1"},
                          headers={"Authorization": f"Token {key}"}, trust_env=False)
    assert response.status_code == 201, response.text
    assert "kid" not in jwt.get_unverified_header(response.json()["token"])
