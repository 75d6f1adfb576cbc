"""Client helpers for end-to-end tests: tokens, WebSocket sessions, the REST API, metrics.

Every wait is bounded: a helper that waits takes ``within`` (seconds) and fails the test
with a message naming what did not happen, never hangs.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import jwt
import websockets
from websockets.asyncio.client import ClientConnection

from tests.support.gateway import JWT_SECRET, GatewayProcess

T = TypeVar("T")
#: Default bound for one expected frame or close.
WAIT_S = 5.0


def uid(prefix: str = "u") -> str:
    """A user id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_token(user: Any, *, ttl: int = 600, secret: str = JWT_SECRET, **claims: Any) -> str:
    """An HS256 client token; ``ttl`` may be negative for an expired one."""
    now = int(time.time())
    body: dict[str, Any] = {"sub": user, "iat": now, "exp": now + ttl, **claims}
    return jwt.encode(body, secret, algorithm="HS256")


# --- WebSocket ---------------------------------------------------------------------------

async def ws_connect(gw: GatewayProcess, token: str | None = None, *, header: bool = False,
                     **kwargs: Any) -> ClientConnection:
    """Open ``/ws/`` with the token in the query string, or in ``Authorization: Bearer``."""
    url = gw.ws_url
    extra: dict[str, Any] = {"proxy": None, "open_timeout": WAIT_S, "close_timeout": 2}
    if token is not None and header:
        extra["additional_headers"] = {"Authorization": f"Bearer {token}"}
    elif token is not None:
        url = f"{url}?token={token}"
    extra.update(kwargs)
    return await websockets.connect(url, **extra)


async def recv_json(ws: ClientConnection, within: float = WAIT_S) -> dict[str, Any]:
    try:
        raw = await asyncio.wait_for(ws.recv(), within)
    except TimeoutError:
        raise AssertionError(f"no frame within {within} s") from None
    assert isinstance(raw, str), f"expected a text frame, got {raw!r:.200}"
    frame = json.loads(raw)
    assert isinstance(frame, dict), frame
    return frame


async def recv_push(ws: ClientConnection, within: float = WAIT_S) -> dict[str, Any]:
    frame = await recv_json(ws, within)
    assert frame["type"] == "push", frame
    return frame


async def wait_closed(ws: ClientConnection,
                      within: float = WAIT_S) -> tuple[int | None, list[Any]]:
    """Read until the server closes: ``(close code, frames received before the close)``."""
    frames: list[Any] = []

    async def drain() -> None:
        while True:
            frames.append(await ws.recv())

    try:
        await asyncio.wait_for(drain(), within)
    except websockets.ConnectionClosed:
        return ws.close_code, frames
    except TimeoutError:
        raise AssertionError(
            f"connection still open after {within} s; got {len(frames)} frame(s)"
        ) from None
    raise AssertionError("unreachable")


async def ping(ws: ClientConnection, within: float = WAIT_S) -> dict[str, Any]:
    """Application ping; asserts a pong with a numeric server timestamp comes back."""
    await ws.send('{"type":"ping"}')
    frame = await recv_json(ws, within)
    assert frame["type"] == "pong", frame
    assert isinstance(frame["ts"], int) and not isinstance(frame["ts"], bool), frame
    return frame


@asynccontextmanager
async def session(gw: GatewayProcess, user: str | None = None, **kwargs: Any):
    """A connected client of ``user`` that has seen its welcome: ``(ws, welcome)``."""
    user = user or uid()
    ws = await ws_connect(gw, make_token(user), **kwargs)
    try:
        welcome = await recv_json(ws)
        assert welcome["type"] == "welcome", welcome
        assert welcome["user"] == user, welcome
        yield ws, welcome
    finally:
        await ws.close()


def small_rcvbuf_socket(size: int = 4096) -> socket.socket:
    """A client socket with a fixed small receive buffer (no kernel autotuning)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    sock.setblocking(False)
    return sock


# --- REST API ----------------------------------------------------------------------------

class Api:
    """The business REST API with one client's key."""

    def __init__(self, gw: GatewayProcess, key: str | None) -> None:
        headers = {"Authorization": f"Token {key}"} if key else {}
        self.http = httpx.AsyncClient(
            base_url=gw.url, headers=headers, timeout=WAIT_S * 2, trust_env=False
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def push(self, body: Any, expect: int | None = 202) -> httpx.Response:
        response = await self.http.post("/api/v1/push", json=body)
        if expect is not None:
            assert response.status_code == expect, (response.status_code, response.text)
        return response

    async def push_to(self, users: list[str], data: Any, **extra: Any) -> str:
        response = await self.push({"users": users, "data": data, **extra})
        return str(response.json()["id"])

    async def get_push(self, push_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/v1/push/{push_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def presence(self, user: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/v1/users/{user}/presence")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def disconnect(self, user: str, reason: str | None = None,
                         expect: int | None = 202) -> httpx.Response:
        body = {} if reason is None else {"reason": reason}
        response = await self.http.post(f"/api/v1/users/{user}/disconnect", json=body)
        if expect is not None:
            assert response.status_code == expect, (response.status_code, response.text)
        return response


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """A contract error: the status, and a JSON body with ``error`` and ``detail``."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    if code is not None:
        assert body["error"] == code, body
    return dict(body)


# --- Waiting and metrics -----------------------------------------------------------------

async def eventually(fn: Callable[[], Awaitable[T]], check: Callable[[T], bool], *,
                     within: float = WAIT_S, interval: float = 0.1, what: str = "") -> T:
    """Poll ``fn`` until ``check`` holds for its result; fails with the last result."""
    deadline = time.monotonic() + within
    while True:
        value = await fn()
        if check(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within} s: {what or 'condition'}; last: {value!r}")
        await asyncio.sleep(interval)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        have = dict(_LABEL.findall(match.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


async def metrics_text(gw: GatewayProcess) -> str:
    async with httpx.AsyncClient(trust_env=False, timeout=WAIT_S) as http:
        response = await http.get(f"{gw.url}/metrics")
    assert response.status_code == 200, response.text
    return response.text
