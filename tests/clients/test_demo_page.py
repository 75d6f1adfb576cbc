"""The demo page in headless Chromium, on the gateway's client module: connect with a pasted
token, receive (and ack) a push, stop on 4010."""

from __future__ import annotations

import pytest
from gateway_client import GatewayAPI

from tests.support.client_libs import CHROMIUM, CHROMIUM_ARGS, require_chromium
from tests.support.clients import eventually, make_token, uid
from tests.support.gateway import GatewayProcess

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


async def test_the_demo_page_runs_on_the_module(gw: GatewayProcess, key: str) -> None:
    require_chromium()
    async_api = pytest.importorskip("playwright.async_api")
    user = uid("demo")
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{gw.url}/demo/")
            await page.fill("#token", make_token(user))
            await page.click("#connect")
            expect = async_api.expect
            await expect(page.locator("#state")).to_have_text("open", timeout=10_000)
            async with GatewayAPI(gw.url, key=key) as api:
                push_id = (await api.push(users=[user], data={"order": 42}))["id"]
                await expect(page.locator("#since")).to_have_text(push_id, timeout=10_000)
                await expect(page.locator("#log")).to_contain_text('"order":42')
                await eventually(lambda: api.status(push_id), lambda s: s["acked"] == 1,
                                 within=10, what="the page acked the push")
                await api.disconnect(user, reason="demo over")
                await expect(page.locator("#state")).to_have_text("closed", timeout=10_000)
                await expect(page.locator("#log")).to_contain_text("closed 4010")
                assert await page.evaluate("window.gatewayDemo.closeCode") == 4010
        finally:
            await browser.close()
