"""Client frames (PROTOCOL.md section 1): parsing what arrives, building what is sent."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs


class BadFrame(ValueError):
    """A frame the server answers with ``{"type": "error", "code": "bad_frame"}``."""


#: The heartbeat as clients send it (most of what a node receives): answered without a JSON
#: parse. Any other spelling of it still goes through ``json.loads``.
PING_TEXT = '{"type":"ping"}'


def parse(text: str) -> dict[str, Any]:
    if text == PING_TEXT:
        return {"type": "ping"}
    try:
        frame = json.loads(text)
    except ValueError as exc:  # also a number too long to convert
        raise BadFrame("frame is not JSON") from exc
    except RecursionError as exc:
        # Nesting deep enough to exhaust the parser's stack ("[" * 2000): what a client
        # sends may never end the handler.
        raise BadFrame("frame is nested too deeply") from exc
    if not isinstance(frame, dict):
        raise BadFrame("frame is not a JSON object")
    kind = frame.get("type")
    if kind == "ack":
        if not isinstance(frame.get("id"), str):
            raise BadFrame('ack needs "id", a push id string')
    elif kind == "refresh":
        if not isinstance(frame.get("token"), str):
            raise BadFrame('refresh needs "token", a JWT string')
    elif kind != "ping":
        # Echo a short string only: a nested value's repr could recurse as deep as it nests.
        shown = repr(kind[:64]) if isinstance(kind, str) else f"of JSON type {_json_type(kind)}"
        raise BadFrame(f"unknown frame type {shown}; expected ping, ack or refresh")
    return frame


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "array" if isinstance(value, list) else "object"


def welcome(*, session_id: str, node_id: str, user_id: str, interval_s: int, timeout_s: int,
            recovery: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {
        "type": "welcome", "session": session_id, "node": node_id, "user": user_id,
        "heartbeat": {"interval": interval_s, "timeout": timeout_s},
    }
    if recovery is not None:
        body["recovery"] = recovery
    return json.dumps(body)


#: How every push frame starts (``PushMessage.frame``): the push id follows.
PUSH_FRAME_HEAD = '{"type":"push","id":"'


def push_id_of(frame: str) -> str | None:
    """The id of a push frame this node built, without parsing it; None for other frames."""
    if not frame.startswith(PUSH_FRAME_HEAD):
        return None
    end = frame.find('"', len(PUSH_FRAME_HEAD))
    return frame[len(PUSH_FRAME_HEAD):end] if end > 0 else None


def since_from_scope(scope: dict[str, Any]) -> str | None:
    """``?since=<push id>`` (PROTOCOL.md section 6), or None without one."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("since")
    return values[0] if values else None


def refreshed(expires_at: int) -> str:
    return '{"type":"refreshed","exp":' + str(expires_at) + "}"


def pong(now_ms: int) -> str:
    return '{"type":"pong","ts":' + str(now_ms) + "}"


def wire(text: str) -> bytes:
    """``text`` as one WebSocket text frame from a server (RFC 6455 5.2: final, unmasked).

    A push to many connections is encoded once here, and written as these bytes to every
    connection the server lets us write to directly (``flow.SendBuffer.write_wire``),
    instead of once per recipient inside the server's protocol.
    """
    payload = text.encode()
    size = len(payload)
    if size < 126:
        head = bytes((0x81, size))
    elif size < 65536:
        head = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return head + payload


def error(detail: str, code: str = "bad_frame") -> str:
    return json.dumps({"type": "error", "code": code, "detail": detail})


def token_from_scope(scope: dict[str, Any]) -> str:
    """``?token=`` first (browsers), then ``Authorization: Bearer`` (other clients)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0]
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return credentials.strip()
    return ""


def header(scope: dict[str, Any], wanted: bytes) -> str:
    for name, value in scope.get("headers", []):
        if name == wanted:
            return str(value.decode("latin-1"))
    return ""
