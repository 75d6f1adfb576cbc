"""The WebSocket handshake against a real node, under each server (issue #10):
``GATEWAY_ALLOWED_ORIGINS`` refuses foreign browser origins with 403 before accepting, and
an oversized handshake gets an HTTP answer instead of a silently dropped connection."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

import pytest
import websockets

from tests.support.clients import make_token, recv_json, uid, ws_connect
from tests.support.gateway import SERVERS, GatewayProcess

pytestmark = pytest.mark.e2e

ALLOWED = "https://app.example.com,http://localhost:3000"


async def _status(gw: GatewayProcess, origin: str | None) -> int:
    """101 when the handshake is accepted (and the welcome frame arrives), else the status."""
    kwargs = {"origin": origin} if origin is not None else {}
    try:
        ws = await ws_connect(gw, make_token(uid("origin")), **kwargs)
    except websockets.InvalidStatus as refused:
        return refused.response.status_code
    try:
        assert (await recv_json(ws))["type"] == "welcome"
    finally:
        await ws.close()
    return 101


@pytest.mark.parametrize("server", SERVERS)
async def test_origin_allow_list(start_node: Callable[..., GatewayProcess], server: str) -> None:
    gw = start_node(f"origins-{server}", server=server, GATEWAY_ALLOWED_ORIGINS=ALLOWED)
    assert await _status(gw, "https://evil.example.net") == 403
    assert await _status(gw, "https://app.example.com.evil.net") == 403
    assert await _status(gw, "http://app.example.com") == 403  # another scheme, another origin
    assert await _status(gw, "null") == 403
    assert await _status(gw, "https://app.example.com") == 101
    assert await _status(gw, "https://APP.example.com:443") == 101  # the same origin
    assert await _status(gw, "http://localhost:3000") == 101
    assert await _status(gw, None) == 101  # not a browser


HANDSHAKE = (
    "GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def _answer(gw: GatewayProcess, extra_headers: str, within_s: float = 10) -> bytes:
    """What the node writes back to a handshake with ``extra_headers``, until it closes."""
    return _raw(gw, (HANDSHAKE + extra_headers + "\r\n").encode(), within_s)


def _raw(gw: GatewayProcess, request: bytes, within_s: float = 10) -> bytes:
    """What the node writes back to ``request`` until it closes (or ``within_s`` passes)."""
    received = b""
    with socket.create_connection((gw.host, gw.port), timeout=within_s) as sock:
        # The node may answer and close before it has read everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
    return received


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("shape", ["one-huge-header", "many-headers"])
def test_oversized_handshake_gets_an_http_answer(
    start_node: Callable[..., GatewayProcess], server: str, shape: str
) -> None:
    gw = start_node(f"bighs-{server}", server=server)
    if shape == "one-huge-header":
        extra = f"X-Big: {'a' * 120_000}\r\n"
    else:
        extra = "".join(f"X-Many-{i}: {'b' * 60}\r\n" for i in range(2_000))
    answer = _answer(gw, extra)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), answer[:300]
    # And the node is still there for everyone else.
    ok = _answer(gw, "")
    assert ok.startswith(b"HTTP/1.1 101"), ok[:300]


@pytest.mark.parametrize("server", SERVERS)
def test_oversized_http_headers_are_refused(
    start_node: Callable[..., GatewayProcess], server: str
) -> None:
    """Not only handshakes: any request's header section is bounded (16 KiB under either
    server), so a client cannot make a node hold megabytes of headers."""
    gw = start_node(f"bighttp-{server}", server=server)
    for extra in (f"X-Big: {'a' * 2_000_000}\r\n",
                  "".join(f"X-Many-{i}: {'b' * 60}\r\n" for i in range(400))):
        request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n"
        answer = _raw(gw, request.encode())
        assert answer.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), answer[:300]
    ok = _raw(gw, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200"), ok[:300]
    # A large body is not a large header section: it reaches the API (401: no key).
    body = b'{"users": ["u1"], "data": "' + b"x" * 200_000 + b'"}'
    big = _raw(gw, b"POST /api/v1/push HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (len(body), body))
    assert big.startswith(b"HTTP/1.1 401"), big[:300]
    # ... also on a kept-alive connection, where the next request follows the body.
    kept = _raw(gw, b"POST /api/v1/push HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                % (len(body), body))
    assert kept.startswith(b"HTTP/1.1 401"), kept[:300]
    assert b"HTTP/1.1 200" in kept and b" 431 " not in kept, kept[:600]
    # A whole request in one read (headers and a body over the header bound): accepted.
    body = b'{"users": ["u1"], "data": "' + b"x" * 30_000 + b'"}'
    whole = _raw(gw, b"POST /api/v1/push HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    assert whole.startswith(b"HTTP/1.1 401"), whole[:300]
