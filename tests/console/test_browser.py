"""The operator console in a real browser, against a real node.

A real ``rungateway`` node; real WebSocket clients (``websockets``, on a background event
loop); Chromium driven by Playwright's sync API. The operator signs in, reads the
dashboard (which refreshes itself), looks a user up, finds the user's session in the
sessions list and disconnects it with a reason: the client sees close code 4010.

Screenshots go to ``artifacts/screenshots/``; the dashboard's is copied to
``docs/images/dashboard.png`` for the README.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import pytest
import websockets

from tests.support.clients import make_token, recv_json, ws_connect
from tests.support.gateway import REPO, GatewayProcess, start_gateway

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Page, expect, sync_playwright

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

T = TypeVar("T")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
README_IMAGE = REPO / "docs" / "images" / "dashboard.png"
PASSWORD = "console-e2e-password"

# History for the last hour, so the dashboard shows what a working cluster looks like:
# a node that died ten minutes ago, and pushes of an API client spread over the hour.
SEED = """
import math
from datetime import timedelta
from django.utils import timezone
from django.contrib.auth.models import User
from push_app.models import ApiClient, PushDelivery, PushLog
from push_app.services import new_push_id
from sessions_app.models import Node

User.objects.create_superuser("operator", "operator@example.com", "%(password)s")
now = timezone.now()
Node.objects.create(id="node-b", address="10.0.0.12:8000", broker="local",
                    started_at=now - timedelta(hours=5), last_seen=now - timedelta(minutes=10),
                    connections=41, users=38)
shop = ApiClient.objects.get(name="shop")
for minute in range(59, 0, -1):
    for i in range(6 + int(4 * math.sin(minute / 6)) + minute %% 4):
        at = now - timedelta(minutes=minute, seconds=i)
        failed = minute in (41, 17) and i == 0
        log = PushLog.objects.create(
            id=new_push_id(at.timestamp()), client=shop, users=["u%%d" %% (i %% 9)],
            target_count=1, data_json='{"order": %%d}' %% i, payload_bytes=12,
            created_at=at, published_at=None if failed else at,
            status="failed" if failed else "delivered", delivered=0 if failed else 1 + i %% 2,
            acked=0 if failed else 1, accepted_node="e2e-console",
            error="ttl ran out before the broker accepted the push" if failed else "")
        if not failed:
            node = "node-b" if minute > 10 else "e2e-console"
            PushDelivery.objects.create(push=log, node_id=node, delivered=log.delivered,
                                        acked=1)
"""


class WsClients:
    """WebSocket clients on their own event loop thread, for a sync test."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.closed: dict[str, Any] = {}

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connect(self, user: str, token: str | None = None, **meta: str) -> dict[str, Any]:
        """Connect ``user`` (with ``token``, else a token of the app ``default``), read the
        welcome, then keep the client alive (pings, acks) until the server closes it;
        ``self.closed[user]`` resolves to the close code."""

        async def open_() -> tuple[Any, dict[str, Any]]:
            ws = await ws_connect(self.gw, token or make_token(user, meta=meta),
                                  user_agent_header="ConsoleE2E/1.0 (websockets)")
            return ws, await recv_json(ws)

        ws, welcome = self.run(open_())
        self.closed[user] = asyncio.run_coroutine_threadsafe(self._keep(ws), self.loop)
        return welcome

    @staticmethod
    async def _keep(ws: Any) -> int | None:
        async def beat() -> None:
            while True:
                await asyncio.sleep(5)
                await ws.send('{"type":"ping"}')

        beater = asyncio.create_task(beat())
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") == "push":
                    await ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
        except websockets.ConnectionClosed:
            pass
        finally:
            beater.cancel()
        return ws.close_code

    def close(self) -> None:
        async def shutdown() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        self.run(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path, node_id="e2e-console",
                       env={"GATEWAY_RECORD_INTERVAL": "1"})
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def page() -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                     headless=True)
        context = browser.new_context(viewport={"width": 1440, "height": 900},
                                      color_scheme="light")
        page = context.new_page()
        page.set_default_timeout(15_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()


def shot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_operator_finds_a_user_and_disconnects_the_session(gateway: GatewayProcess,
                                                          page: Page) -> None:
    key = gateway.api_key("shop")
    gateway.manage("shell", "-c", SEED % {"password": PASSWORD})
    clients = WsClients(gateway)
    try:
        alice = clients.connect("alice", plan="pro", app="web")
        clients.connect("bob", plan="free")
        clients.connect("carol")
        assert alice["node"] == "e2e-console"
        with httpx.Client(base_url=gateway.url, trust_env=False, timeout=10,
                          headers={"Authorization": f"Token {key}"}) as api:
            for user in ("alice", "bob", "carol", "dave"):
                response = api.post("/api/v1/push", json={"users": [user],
                                                          "data": {"hello": user}})
                assert response.status_code == 202, response.text

        # Sign in; the admin index is the dashboard.
        page.goto(f"{gateway.url}/admin/login/?next=/admin/")
        page.fill("#id_username", "operator")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        live = page.locator("#console-live")
        expect(live).to_be_visible()
        node_row = live.locator("tr", has_text="e2e-console")
        expect(node_row.locator(".console-badge")).to_have_text("alive")
        expect(live.locator("tr", has_text="node-b").locator(".console-badge")).to_have_text(
            "dead")
        # The page polls its live part: wait for a refresh, then for all three clients
        # (the node records its sessions every second here).
        page.wait_for_function(
            "document.getElementById('console-live').dataset.refreshed !== undefined",
            timeout=15_000)
        connections = live.locator(".console-card", has_text="Connections")
        expect(connections.locator(".console-card-value")).to_have_text("3", timeout=15_000)
        expect(live.locator(".console-failures")).to_contain_text("ttl ran out")
        dashboard = shot(page, "dashboard.png")
        README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dashboard, README_IMAGE)

        # Click one: look the user up from the dashboard.
        page.fill("#console-q", "alice")
        page.press("#console-q", "Enter")
        expect(page.locator(".console-verdict")).to_contain_text("alice is online")
        expect(page.locator(".console-verdict")).to_contain_text("e2e-console")
        pushes = page.locator("table").last
        expect(pushes).to_contain_text("received: the client acked it")
        shot(page, "user.png")

        # Click two: the push, with what each node delivered and what was acked.
        pushes.locator("a.console-mono").first.click()
        per_node = page.locator(".field-per_node")
        expect(per_node).to_contain_text("e2e-console")
        expect(per_node.locator("tbody tr")).to_have_count(1)
        expect(per_node.locator("tbody td").nth(1)).to_have_text("1")  # delivered
        expect(per_node.locator("tbody td").nth(2)).to_have_text("1")  # acked
        expect(page.locator(".field-payload")).to_contain_text('"hello": "alice"')
        shot(page, "push.png")

        # The sessions list, across nodes: select alice's session and disconnect it.
        page.goto(f"{gateway.url}/admin/sessions_app/sessionrecord/")
        rows = page.locator("#result_list tbody tr")
        expect(rows).to_have_count(3)
        alice_row = rows.filter(has_text="alice")
        expect(alice_row).to_contain_text("plan=pro")
        expect(alice_row).to_contain_text("ConsoleE2E/1.0")
        shot(page, "sessions.png")
        alice_row.locator("input.action-select").check()
        page.select_option("select[name=action]", "disconnect_sessions")
        page.click("button[name=index]")
        expect(page.locator("h1")).to_have_text("Disconnect sessions")
        page.fill("input[name=reason]", "support ticket 42")
        shot(page, "disconnect.png")
        page.click("input[type=submit][value=Disconnect]")
        expect(page.locator(".messagelist")).to_contain_text("Disconnect ordered for 1 session")

        assert clients.closed["alice"].result(timeout=10) == 4010
        assert not clients.closed["bob"].done() and not clients.closed["carol"].done()

        # The list catches up: alice is gone from the live sessions, and her page says why.
        page.wait_for_timeout(1500)
        page.reload()
        expect(page.locator("#result_list tbody tr")).to_have_count(2)
        page.goto(f"{gateway.url}/admin/console/user/?q=alice")
        expect(page.locator(".console-verdict")).to_contain_text("alice is offline")
        expect(page.locator(".console-verdict")).to_contain_text("4010")
    finally:
        clients.close()


# --- Layout at a laptop's and a phone's width, and the id search (issue #17) --------------

def sign_in(page: Page, gateway: GatewayProcess) -> None:
    page.goto(f"{gateway.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#console-live")).to_be_visible()


def overflow(page: Page) -> dict[str, Any]:
    """How wide the document is against the window: a page that scrolls sideways has
    ``scrollWidth`` over ``innerWidth``. ``culprits``: the outermost elements reaching past
    the window's right edge, for the failure message."""
    return page.evaluate("""(() => {
      const inner = window.innerWidth, out = [];
      for (const el of document.body.querySelectorAll('*')) {
        const r = el.getBoundingClientRect();
        if (r.width && r.right > inner + 0.5 && !(el.parentElement
            && el.parentElement.getBoundingClientRect().right > inner + 0.5)) {
          out.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '')
                   + (el.className && el.className.baseVal === undefined
                      ? '.' + String(el.className).trim().split(/\\s+/).join('.') : '')
                   + ' ' + Math.round(r.right));
        }
      }
      return {scroll: document.scrollingElement.scrollWidth, inner: inner,
              culprits: out.slice(0, 5)};
    })()""")


def test_layout_at_1400_and_390_px_and_the_id_search(gateway: GatewayProcess,
                                                     page: Page) -> None:
    key = gateway.api_key("shop")
    gateway.manage("shell", "-c", SEED % {"password": PASSWORD})
    clients = WsClients(gateway)
    try:
        clients.connect("alice", plan="pro")
        with httpx.Client(base_url=gateway.url, trust_env=False, timeout=10,
                          headers={"Authorization": f"Token {key}"}) as api:
            response = api.post("/api/v1/push", json={
                "users": ["alice"], "topic": "orders.shipped.notification",
                "data": {"hello": "alice"}})
            assert response.status_code == 202, response.text
            push_id = response.json()["id"]
            # A refused request, so the dashboard's rejections table has a row.
            assert api.post("/api/v1/push", json={"users": []}).status_code == 400
        sign_in(page, gateway)
        expect(page.locator("#console-live .console-card", has_text="Connections")
               .locator(".console-card-value")).to_have_text("1", timeout=15_000)

        # 1,400 px: the push list shows Published, Delivered, Acked and Error, in view.
        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(f"{gateway.url}/admin/push_app/pushlog/")
        expect(page.locator("#result_list tbody tr").first).to_be_visible()
        for column in ("published_at", "delivered", "acked", "error_short"):
            header = page.locator(f"#result_list thead th.column-{column}")
            expect(header).to_be_visible()
            box = header.bounding_box()
            assert box is not None and box["x"] + box["width"] <= 1400, (column, box)
        results = page.evaluate("(() => { const r = document.querySelector('.results');"
                                " return {scroll: r.scrollWidth, client: r.clientWidth}; })()")
        widths = page.evaluate(
            "(() => [...document.querySelectorAll('#result_list thead th')].map("
            "th => th.className + ':' + Math.round(th.getBoundingClientRect().width)))()")
        assert results["scroll"] <= results["client"], (results, widths)
        assert overflow(page)["scroll"] <= 1400
        shot(page, "pushlogs-1400.png")

        # 390 px (a phone): no page scrolls sideways.
        page.set_viewport_size({"width": 390, "height": 844})
        pages = {
            "dashboard": "/admin/",
            "pushlogs": "/admin/push_app/pushlog/",
            "push": f"/admin/push_app/pushlog/{push_id}/change/",
            "user": "/admin/console/user/?q=alice",
            "sessions": "/admin/sessions_app/sessionrecord/",
            "nodes": "/admin/sessions_app/node/",
            "node": "/admin/console/node/e2e-console/",
            "apiclients": "/admin/push_app/apiclient/",
            "audit": "/admin/push_app/auditevent/",
        }
        too_wide = {}
        for name, path in pages.items():
            response = page.goto(f"{gateway.url}{path}")
            assert response is not None and response.status == 200, (name, path)
            page.wait_for_load_state("load")
            size = overflow(page)
            if size["scroll"] > size["inner"]:
                too_wide[name] = size
            shot(page, f"phone-{name}.png")
        assert too_wide == {}, f"pages that scroll sideways at 390 px: {too_wide}"

        # The id search: a push id's start (and the start…end the tables show) finds the
        # push; an unknown id says so and offers no "Disconnect all".
        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(f"{gateway.url}/admin/")
        page.fill("#console-q", push_id[:20])
        page.press("#console-q", "Enter")
        expect(page).to_have_url(f"{gateway.url}/admin/push_app/pushlog/{push_id}/change/")
        expect(page.locator(".field-id")).to_contain_text(push_id)
        page.fill("#console-find-q", f"{push_id[:6]}…{push_id[-7:]}")
        page.press("#console-find-q", "Enter")
        expect(page).to_have_url(f"{gateway.url}/admin/push_app/pushlog/{push_id}/change/")
        unknown = "0" * 12 + "feedfacefeedface"
        page.fill("#console-find-q", unknown)
        page.press("#console-find-q", "Enter")
        expect(page.locator(".console-not-found")).to_contain_text("Not found")
        expect(page.locator("text=Disconnect all")).to_have_count(0)
        shot(page, "not-found.png")
    finally:
        clients.close()


def test_the_app_filter_on_sessions_and_pushes(gateway: GatewayProcess, page: Page) -> None:
    """Two apps with a user of the same id: the console's app filter shows one app's
    sessions and pushes (PROTOCOL.md section 9), and the apps page lists both with keys."""
    shop_key = gateway.api_key("shop")
    gateway.manage("shell", "-c", SEED % {"password": PASSWORD})
    bank_secret = gateway.manage("createapp", "bank").splitlines()[-1]
    bank_key = gateway.manage("createapikey", "bank-backend", "--app", "bank").strip()
    bank_token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, bank_secret,
                            algorithm="HS256", headers={"kid": "bank"})
    clients = WsClients(gateway)
    try:
        clients.connect("alice")
        clients.connect("alice", token=bank_token)
        for key in (shop_key, bank_key):
            with httpx.Client(base_url=gateway.url, trust_env=False, timeout=10,
                              headers={"Authorization": f"Token {key}"}) as api:
                response = api.post("/api/v1/push", json={"users": ["alice"], "data": 1})
                assert response.status_code == 202, response.text
        sign_in(page, gateway)

        # Both of alice's sessions are live (the node records them every second).
        rows = page.locator("#result_list tbody tr")
        for _ in range(30):
            page.goto(f"{gateway.url}/admin/sessions_app/sessionrecord/")
            if rows.count() == 2:
                break
            page.wait_for_timeout(500)
        expect(rows).to_have_count(2)
        page.locator("#changelist-filter a", has_text="bank").first.click()
        expect(rows).to_have_count(1)
        expect(rows.first.locator("td.field-app")).to_have_text("bank")
        shot(page, "sessions-app-filter.png")

        page.goto(f"{gateway.url}/admin/push_app/pushlog/")
        page.locator("#changelist-filter a", has_text="bank").first.click()
        expect(rows.filter(has=page.locator("td.field-app", has_text="bank"))).to_have_count(1)
        expect(rows.filter(has=page.locator("td.field-app", has_text="default"))).to_have_count(0)

        page.goto(f"{gateway.url}/admin/push_app/app/")
        bank = rows.filter(has_text="bank")
        expect(bank.locator("td.field-keys")).to_have_text("1")
        expect(rows.filter(has_text="default")).to_have_count(1)
    finally:
        clients.close()
