"""The gateway's client libraries as the end-to-end tests drive them: the Python package in
this process, the JS module in Node (``clients/js/test/driver.mjs``) and in headless
Chromium (Playwright's async API, Debian's ``/usr/bin/chromium``).

Each records what the application sees as events (``{"kind": "push" | "state" | "error" |
"welcome" | "token" | "stopped", ...}``), so one scenario runs against all three. Every wait
is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gateway_client import GatewayClient, GatewayClosed

from tests.support.clients import make_token
from tests.support.gateway import JWT_SECRET, REPO

JS_DIR = REPO / "clients" / "js"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
KINDS = ("python", "node", "chromium")


def _require(ok: bool, message: str) -> None:
    if ok:
        return
    if os.environ.get("GATEWAY_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def require_chromium() -> None:
    _require(CHROMIUM.exists(), f"{CHROMIUM} is not installed")


def node_binary() -> str:
    """``node`` with the ``ws`` devDependency installed in clients/js (``npm install``)."""
    node = shutil.which("node")
    _require(node is not None, "node is not installed")
    assert node is not None
    if not (JS_DIR / "node_modules" / "ws").is_dir():
        npm = shutil.which("npm")
        _require(npm is not None, "npm is not installed (clients/js needs its ws devDependency)")
        assert npm is not None
        subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True,
                       capture_output=True, timeout=300)
    return node


class LibClient:
    """One client library instance for ``user``: ``get_token`` mode (tokens of
    ``token_ttl_s``), or with ``bare_ttl_s`` a bare token of that lifetime, made just before
    the client is (so that a slow browser start does not eat it)."""

    kind = "?"

    def __init__(self, url: str, user: str, *, token_ttl_s: int = 600,
                 bare_ttl_s: int | None = None) -> None:
        self.url = url
        self.user = user
        self.token_ttl_s = token_ttl_s
        self.bare_ttl_s = bare_ttl_s
        self.events: list[dict[str, Any]] = []

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    # --- what the application saw ----------------------------------------------------
    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]

    def push_ids(self) -> list[str]:
        return [e["id"] for e in self.of("push")]

    def error_codes(self) -> list[Any]:
        return [e.get("code") for e in self.of("error")]

    async def wait_for(self, check: Callable[[LibClient], bool], *, within: float = 10,
                       what: str = "") -> None:
        deadline = time.monotonic() + within
        while not check(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.kind}: not within {within} s: {what}; "
                                     f"events: {self.events[-30:]}")
            await asyncio.sleep(0.05)

    def _token(self) -> str:
        self.events.append({"kind": "token"})
        return make_token(self.user, ttl=self.token_ttl_s)

    def _bare(self) -> str:
        assert self.bare_ttl_s is not None
        return make_token(self.user, ttl=self.bare_ttl_s)


class PythonLib(LibClient):
    kind = "python"

    async def start(self) -> None:
        kwargs: dict[str, Any] = ({"token": self._bare()} if self.bare_ttl_s else
                                  {"get_token": self._get_token})
        self.client = GatewayClient(self.url, connect_kwargs={"proxy": None}, **kwargs)
        client = self.client

        @client.on_push
        async def push(p: Any) -> None:
            self.events.append({"kind": "push", "id": p.id, "data": p.data,
                                "redelivered": p.redelivered})

        client.on_state(lambda s: self.events.append({"kind": "state", "state": s}))
        client.on_welcome(lambda w: self.events.append(
            {"kind": "welcome", "session": w["session"], "node": w["node"],
             "recovery": w.get("recovery")}))
        client.on_error(lambda e: self.events.append(
            {"kind": "error", "code": e.code if isinstance(e, GatewayClosed) else None,
             "message": str(e)}))
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        await self.client.run()
        self.events.append({"kind": "stopped", "closeCode": self.client.close_code})

    async def _get_token(self) -> str:
        return self._token()

    async def stop(self) -> None:
        await self.client.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.task, 10)


class NodeLib(LibClient):
    kind = "node"

    async def start(self) -> None:
        env = {**os.environ, "GW_URL": self.url, "GW_USER": self.user, "GW_SECRET": JWT_SECRET,
               "GW_TOKEN_TTL": str(self.bare_ttl_s or self.token_ttl_s),
               "GW_MODE": "token" if self.bare_ttl_s else "getToken"}
        self.proc = await asyncio.create_subprocess_exec(
            node_binary(), str(JS_DIR / "test" / "driver.mjs"), cwd=JS_DIR, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            text = line.decode(errors="replace").strip()
            try:
                self.events.append(json.loads(text))
            except ValueError:
                self.events.append({"kind": "output", "text": text})

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.proc.stdin.write(b"close\n")
                await self.proc.stdin.drain()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reader, 5)


BROWSER_CLIENT = """
async ([url, bare]) => {
  const { GatewayClient } = await import("/static/gateway/gateway.js");
  const options = bare ? { token: bare } : { getToken: () => window.pyToken() };
  const client = new GatewayClient(url, options);
  client.on("push", async (p) => {
    await window.pyEvent({ kind: "push", id: p.id, data: p.data, redelivered: !!p.redelivered });
  });
  client.on("state", (state) => {
    window.pyEvent({ kind: "state", state });
    if (state === "closed") window.pyEvent({ kind: "stopped", closeCode: client.closeCode });
  });
  client.on("welcome", (w) => window.pyEvent(
    { kind: "welcome", session: w.session, node: w.node, recovery: w.recovery ?? null }));
  client.on("error", (e) => window.pyEvent({ kind: "error", code: e.code, message: e.message }));
  window.client = client;
  client.connect();
}
"""


class ChromiumLib(LibClient):
    """The module as the gateway serves it, imported by a page of the gateway (``page_url``)
    in headless Chromium."""

    kind = "chromium"
    page_url = ""

    async def start(self) -> None:
        require_chromium()
        async_api = pytest.importorskip("playwright.async_api")
        self.pw = await async_api.async_playwright().start()
        self.browser = await self.pw.chromium.launch(executable_path=str(CHROMIUM),
                                                     args=CHROMIUM_ARGS)
        self.page = await self.browser.new_page()
        self.page.on("console", lambda m: self.events.append({"kind": "console",
                                                               "text": m.text}))

        async def py_token() -> str:
            return self._token()

        async def py_event(event: dict[str, Any]) -> None:
            self.events.append(event)

        await self.page.expose_function("pyToken", py_token)
        await self.page.expose_function("pyEvent", py_event)
        await self.page.goto(self.page_url)
        bare = self._bare() if self.bare_ttl_s else ""
        await self.page.evaluate(BROWSER_CLIENT, [self.url, bare])

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.page.evaluate("window.client && window.client.close()")
        await self.browser.close()
        await self.pw.stop()


def lib_client(kind: str, url: str, user: str, *, page_url: str = "",
               **kwargs: Any) -> LibClient:
    if kind == "python":
        return PythonLib(url, user, **kwargs)
    if kind == "node":
        return NodeLib(url, user, **kwargs)
    lib = ChromiumLib(url, user, **kwargs)
    lib.page_url = page_url
    return lib
