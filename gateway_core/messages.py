"""The messages that cross the broker: typed, versioned, and encoded in one place.

A push's ``data`` is serialised once, when the API accepts it, and travels as that JSON
text; each node builds the client frame from it once per push, never once per recipient.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

MESSAGE_VERSION = 1
TAG_PUSH = "push"
TAG_CONTROL = "control"
KIND_PUSH_BATCH = "push_batch"


class BadMessage(ValueError):
    """Bytes from the broker that are not a message of a version this node understands."""


@dataclass(frozen=True, slots=True)
class PushMessage:
    id: str
    users: tuple[str, ...] | None  # None: every user on every node (broadcast)
    data_json: str
    topic: str | None
    accepted_ms: int
    expires_ms: int | None = None
    # Set by the relay when it hands the push to the broker: how nodes tell a fresh
    # message from history that a new consumer group replays.
    published_ms: int | None = None

    tag = TAG_PUSH

    def expired(self, now_ms: int) -> bool:
        return self.expires_ms is not None and now_ms >= self.expires_ms

    def frame(self) -> str:
        """The client frame, built once per push on each node."""
        return (
            '{"type":"push","id":' + json.dumps(self.id)
            + ',"topic":' + json.dumps(self.topic)
            + ',"data":' + self.data_json
            + ',"ts":' + str(self.accepted_ms) + "}"
        )


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """An order to every node, such as closing a user's connections."""

    id: str
    action: Literal["disconnect"]
    users: tuple[str, ...]
    session_ids: tuple[str, ...]
    reason: str
    issued_ms: int

    tag = TAG_CONTROL
    #: An order not published within this long is dropped: the moment it was for is gone.
    ttl_ms = 60_000

    def expired(self, now_ms: int) -> bool:
        return now_ms >= self.issued_ms + self.ttl_ms


Message = PushMessage | ControlMessage


def _push_body(message: PushMessage) -> dict[str, Any]:
    return {
        "v": MESSAGE_VERSION,
        "kind": TAG_PUSH,
        "id": message.id,
        "users": None if message.users is None else list(message.users),
        "data_json": message.data_json,
        "topic": message.topic,
        "accepted_ms": message.accepted_ms,
        "expires_ms": message.expires_ms,
        "published_ms": message.published_ms,
    }


def encode_batch(pushes: list[PushMessage]) -> bytes:
    """Several pushes as one broker message (kind ``push_batch``, tag ``push``).

    The relay sends what is pending as a few such messages instead of one per push: with
    RocketMQ each broker message costs a signed gRPC send, a receive and an ack in Python on
    every node, which capped a node at a few hundred pushes a second. Nodes older than
    this kind skip it as unknown, so a cluster is upgraded all at once.
    """
    body = {"v": MESSAGE_VERSION, "kind": KIND_PUSH_BATCH,
            "pushes": [_push_body(push) for push in pushes]}
    return json.dumps(body, separators=(",", ":")).encode()


def encode(message: Message) -> bytes:
    body: dict[str, Any]
    if isinstance(message, PushMessage):
        body = _push_body(message)
    else:
        body = {
            "v": MESSAGE_VERSION,
            "kind": TAG_CONTROL,
            "id": message.id,
            "action": message.action,
            "users": list(message.users),
            "session_ids": list(message.session_ids),
            "reason": message.reason,
            "issued_ms": message.issued_ms,
        }
    return json.dumps(body, separators=(",", ":")).encode()


def decode(raw: bytes | str) -> Message:
    """Parse broker bytes holding one message; raise ``BadMessage`` with a reason a log
    line can show."""
    return _decode_body(_load(raw))


def decode_many(raw: bytes | str) -> list[Message]:
    """Parse broker bytes holding one message or a ``push_batch`` (``encode_batch``)."""
    body = _load(raw)
    if body.get("kind") != KIND_PUSH_BATCH:
        return [_decode_body(body)]
    pushes = body.get("pushes")
    if not isinstance(pushes, list) or not pushes:
        raise BadMessage("push_batch without pushes")
    messages = []
    for item in pushes:
        if not isinstance(item, dict) or item.get("kind") != TAG_PUSH:
            raise BadMessage("push_batch holds something other than pushes")
        messages.append(_decode_body(item))
    return messages


def _load(raw: bytes | str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadMessage(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadMessage("not a JSON object")
    if body.get("v") != MESSAGE_VERSION:
        raise BadMessage(f"unsupported version {body.get('v')!r}")
    return body


def _decode_body(body: dict[str, Any]) -> Message:
    try:
        if body["kind"] == TAG_PUSH:
            users = body["users"]
            return PushMessage(
                id=_str(body["id"]),
                users=None if users is None else _str_tuple(users),
                data_json=_str(body["data_json"]),
                topic=None if body["topic"] is None else _str(body["topic"]),
                accepted_ms=_int(body["accepted_ms"]),
                expires_ms=_opt_int(body["expires_ms"]),
                published_ms=_opt_int(body.get("published_ms")),
            )
        if body["kind"] == TAG_CONTROL and body["action"] == "disconnect":
            return ControlMessage(
                id=_str(body["id"]),
                action="disconnect",
                users=_str_tuple(body["users"]),
                session_ids=_str_tuple(body["session_ids"]),
                reason=_str(body["reason"]),
                issued_ms=_int(body["issued_ms"]),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadMessage(f"missing or malformed field: {exc}") from exc
    raise BadMessage(f"unknown kind {body.get('kind')!r}")


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _str_tuple(value: object) -> tuple[str, ...]:
    # A bare string or an object would otherwise iterate into characters or keys.
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return tuple(_str(item) for item in value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return int(value)


def _opt_int(value: object) -> int | None:
    return None if value is None else _int(value)
