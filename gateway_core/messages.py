"""The messages that cross the broker: typed, versioned, and encoded in one place.

A push's ``data`` is serialised once, when the API accepts it, and travels as that JSON
text; each node builds the client frame from it once per push, never once per recipient.

Every push and order belongs to one app (PROTOCOL.md section 9). A message of the app
``default`` is encoded exactly as before apps existed (version 1, no ``app`` field), so
nodes of an older release keep delivering it during a rolling upgrade; a message of any
other app is version 2, which older nodes skip as unknown rather than deliver to the
``default`` user of the same id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from gateway_core.tenancy import DEFAULT_APP

MESSAGE_VERSION = 1
#: Messages of an app other than ``default`` (the field ``app``): see the module's note.
APP_MESSAGE_VERSION = 2
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
    app: str = DEFAULT_APP

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
    """An order to every node, such as closing a user's connections; or, with ``node``, to
    that node alone (routed delivery). ``replace`` closes the named sessions with 4009 (the
    cluster-wide per-user cap); nodes older than it skip it as unknown."""

    id: str
    action: Literal["disconnect", "replace"]
    users: tuple[str, ...]
    session_ids: tuple[str, ...]
    reason: str
    issued_ms: int
    app: str = DEFAULT_APP
    node: str | None = None

    tag = TAG_CONTROL
    #: An order not published within this long is dropped: the moment it was for is gone.
    ttl_ms = 60_000

    def expired(self, now_ms: int) -> bool:
        return now_ms >= self.issued_ms + self.ttl_ms


Message = PushMessage | ControlMessage


def _version(app: str) -> int:
    return MESSAGE_VERSION if app == DEFAULT_APP else APP_MESSAGE_VERSION


def _with_app(body: dict[str, Any], app: str) -> dict[str, Any]:
    if app != DEFAULT_APP:
        body["app"] = app
    return body


def _push_body(message: PushMessage) -> dict[str, Any]:
    return _with_app({
        "v": _version(message.app),
        "kind": TAG_PUSH,
        "id": message.id,
        "users": None if message.users is None else list(message.users),
        "data_json": message.data_json,
        "topic": message.topic,
        "accepted_ms": message.accepted_ms,
        "expires_ms": message.expires_ms,
        "published_ms": message.published_ms,
    }, message.app)


def encode_batch(pushes: list[PushMessage]) -> bytes:
    """Several pushes as one broker message (kind ``push_batch``, tag ``push``).

    The relay sends what is pending as a few such messages instead of one per push: with
    RocketMQ each broker message costs a signed gRPC send, a receive and an ack in Python on
    every node, which capped a node at a few hundred pushes a second. Nodes older than
    this kind skip it as unknown, so a cluster is upgraded all at once.

    A batch holding a push of an app other than ``default`` is version 2 as a whole (the
    relay keeps ``default`` pushes in batches of their own: ``same_version``).
    """
    version = max(_version(push.app) for push in pushes)
    body = {"v": version, "kind": KIND_PUSH_BATCH,
            "pushes": [_push_body(push) for push in pushes]}
    return json.dumps(body, separators=(",", ":")).encode()


def encode(message: Message) -> bytes:
    body: dict[str, Any]
    if isinstance(message, PushMessage):
        body = _push_body(message)
    else:
        body = _with_app({
            "v": _version(message.app),
            "kind": TAG_CONTROL,
            "id": message.id,
            "action": message.action,
            "users": list(message.users),
            "session_ids": list(message.session_ids),
            "reason": message.reason,
            "issued_ms": message.issued_ms,
        }, message.app)
        if message.node is not None:
            body["node"] = message.node
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
    if body.get("v") not in (MESSAGE_VERSION, APP_MESSAGE_VERSION):
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
                app=_app(body),
            )
        if body["kind"] == TAG_CONTROL and body["action"] in ("disconnect", "replace"):
            node = body.get("node")
            return ControlMessage(
                id=_str(body["id"]),
                action="replace" if body["action"] == "replace" else "disconnect",
                users=_str_tuple(body["users"]),
                session_ids=_str_tuple(body["session_ids"]),
                reason=_str(body["reason"]),
                issued_ms=_int(body["issued_ms"]),
                app=_app(body),
                node=None if node is None else _str(node),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadMessage(f"missing or malformed field: {exc}") from exc
    raise BadMessage(f"unknown kind {body.get('kind')!r}")


def same_version(a: Message, b: Message) -> bool:
    """Whether two messages may share a batch: both of ``default``, or neither."""
    return (a.app == DEFAULT_APP) == (b.app == DEFAULT_APP)


def _app(body: dict[str, Any]) -> str:
    app = body.get("app", DEFAULT_APP)
    return _str(app)


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
