"""Validation of API request bodies into typed requests, with the contract's errors.

Hand-written rather than DRF serializers: these run on every push, and the errors must
name the exact field and limit. Nothing here touches the database.

A body is accepted only if every later stage accepts it (PROTOCOL.md section 2): storable
(the database takes only valid UTF-8), encodable, and parseable back by every client. So
anywhere in a body: no lone surrogates (``"\\ud800"`` parses in Python, but no database,
UTF-8 encoder or strict client takes it), no NaN or Infinity (including a number that
overflows a double, such as ``1e999`` or a 400-digit integer, which JavaScript reads as
Infinity), and at most ``MAX_DEPTH`` levels of arrays and objects counting the request body
as level 1. Checked here, field by field, so that the error names the field and, in a
batch, only the bad item fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway_core.conf import gateway_settings
from gateway_core.jsonsafe import printable, unfit
from gateway_core.tokens import valid_user_id

MAX_TOPIC_CHARS = 200
MAX_IDEMPOTENCY_KEY_CHARS = 200
#: Levels of the batch body around each item: ``{"pushes": [item]}``.
BATCH_ITEM_LEVEL = 3
#: ``json.dumps(data, separators=(",", ":"), ensure_ascii=False)``, without building an
#: encoder on every call (this runs for every push). ``allow_nan=False`` only as a second
#: guard: ``unfit`` has already refused what it would refuse.
_encode_data = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                                allow_nan=False).encode


class RequestInvalid(Exception):
    """A request the API refuses: rendered as ``{"error", "detail", "fields"?}``."""

    def __init__(self, detail: str, *, code: str = "invalid", status: int = 400,
                 fields: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.status = status
        self.fields = fields


@dataclass(frozen=True, slots=True)
class PushRequest:
    users: tuple[str, ...] | None  # None: broadcast
    data_json: str
    topic: str | None
    ttl_s: int | None
    idempotency_key: str | None

    @property
    def targets(self) -> int | str:
        return "all" if self.users is None else len(self.users)


def _invalid(field: str, message: str) -> RequestInvalid:
    return RequestInvalid(f"{field}: {message}", fields={field: message})


def _check_fields(body: dict[str, Any], *, level: int) -> None:
    """``RequestInvalid`` naming the first field of ``body`` whose value is unfit."""
    for name, value in body.items():
        why = unfit(value, level=level + 1)
        if why is not None:
            raise _invalid(printable(name), why)


def push_request(body: Any, *, level: int = 1) -> PushRequest:
    """One push body (PROTOCOL.md section 2) or ``RequestInvalid``; ``level``: where the
    body sits in the request body (1: it is the request body)."""
    if not isinstance(body, dict):
        raise RequestInvalid("a push must be a JSON object")
    _refuse_unknown(body, {"users", "broadcast", "data", "topic", "ttl", "idempotency_key"})
    _check_fields(body, level=level)
    if "data" not in body:
        raise _invalid("data", "required")
    broadcast = body.get("broadcast", False)
    if not isinstance(broadcast, bool):
        raise _invalid("broadcast", "must be true or false")
    users: tuple[str, ...] | None
    if broadcast:
        if body.get("users") is not None:
            raise _invalid("users", "not allowed with broadcast")
        users = None
    else:
        raw_users = body.get("users")
        if not isinstance(raw_users, list) or not raw_users:
            raise _invalid("users", 'required: a non-empty list of user ids, or "broadcast": true')
        limit = gateway_settings.max_users_per_push
        if len(raw_users) > limit:
            raise _invalid("users", f"at most {limit} users per push, got {len(raw_users)}")
        for user in raw_users:
            if not valid_user_id(user):
                raise _invalid("users", f"{str(user)[:64]!r} is not a user id "
                               "(1-128 of A-Z a-z 0-9 _ . : @ -)")
        users = tuple(dict.fromkeys(raw_users))  # duplicates would double-deliver
    topic = body.get("topic")
    if topic is not None and (not isinstance(topic, str) or not 0 < len(topic) <= MAX_TOPIC_CHARS):
        raise _invalid("topic", f"a string of 1-{MAX_TOPIC_CHARS} characters")
    if topic is not None and "\x00" in topic:  # PostgreSQL text columns refuse NUL
        raise _invalid("topic", "must not contain NUL")
    ttl = body.get("ttl")
    max_ttl = gateway_settings.max_ttl_s
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int)
                            or not 0 <= ttl <= max_ttl):
        raise _invalid("ttl", f"whole seconds from 0 to {max_ttl}")
    if ttl == 0:  # v1's "no ttl": live only, waits for the broker as long as it takes
        ttl = None
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str)
                            or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS):
        raise _invalid("idempotency_key", f"a string of 1-{MAX_IDEMPOTENCY_KEY_CHARS} characters")
    if key is not None and "\x00" in key:
        raise _invalid("idempotency_key", "must not contain NUL")
    data_json = _encode_data(body["data"])
    limit = gateway_settings.max_payload_bytes
    size = len(data_json.encode())
    if size > limit:
        raise RequestInvalid(
            f"data is {size} bytes once serialised; the limit is {limit}",
            code="payload_too_large", status=413,
        )
    return PushRequest(users=users, data_json=data_json, topic=topic, ttl_s=ttl,
                       idempotency_key=key)


def batch_requests(
    items: list[Any],
) -> tuple[list[dict[str, Any] | None], list[tuple[int, PushRequest]]]:
    """Validate each batch item: per-index error bodies (None where valid), and the valid
    requests with their index, so that one bad item does not sink the others."""
    results: list[dict[str, Any] | None] = [None] * len(items)
    good: list[tuple[int, PushRequest]] = []
    for index, item in enumerate(items):
        try:
            good.append((index, push_request(item, level=BATCH_ITEM_LEVEL)))
        except RequestInvalid as exc:
            results[index] = {"error": exc.code, "detail": exc.detail}
    return results, good


def batch_items(body: Any) -> list[Any]:
    if not isinstance(body, dict) or not isinstance(body.get("pushes"), list):
        raise _invalid("pushes", "required: a list of push bodies")
    _refuse_unknown(body, {"pushes"})
    items = body["pushes"]
    limit = gateway_settings.max_batch
    if not items:
        raise _invalid("pushes", "empty")
    if len(items) > limit:
        raise _invalid("pushes", f"at most {limit} pushes per batch, got {len(items)}")
    return items


@dataclass(frozen=True, slots=True)
class TokenRequest:
    user_id: str
    ttl_s: int
    meta: dict[str, Any]


def _refuse_unknown(body: dict[str, Any], known: set[str]) -> None:
    """As for pushes: a misspelt field is an error, not silently ignored."""
    unknown = set(body) - known
    if unknown:
        raise _invalid(printable(sorted(unknown)[0]), "unknown field")


def token_request(body: Any) -> TokenRequest:
    if not isinstance(body, dict):
        raise RequestInvalid("body must be a JSON object")
    _refuse_unknown(body, {"user", "ttl", "meta"})
    _check_fields(body, level=1)
    user = body.get("user")
    if not valid_user_id(user):
        raise _invalid("user", "required: 1-128 of A-Z a-z 0-9 _ . : @ -")
    ttl = body.get("ttl", 3600)
    limit = gateway_settings.max_token_ttl_s
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= limit:
        raise _invalid("ttl", f"whole seconds from 1 to {limit}")
    meta = body.get("meta", {})
    if not isinstance(meta, dict):
        raise _invalid("meta", "must be a JSON object")
    # Kept on the session in a JSON column, which PostgreSQL refuses with NUL in a string.
    if unfit(meta, level=2, allow_nul=False) is not None:
        raise _invalid("meta", "must not contain NUL")
    if len(json.dumps(meta)) > 2048:
        raise _invalid("meta", "at most 2048 bytes once serialised")
    return TokenRequest(user_id=str(user), ttl_s=ttl, meta=meta)


def disconnect_reason(body: Any) -> str:
    """The reason of a disconnect body; an empty body reaches here as ``{}`` (a JSON
    ``null`` is not an object, and is refused like any other)."""
    if not isinstance(body, dict):
        raise RequestInvalid("body must be a JSON object")
    _refuse_unknown(body, {"reason"})
    _check_fields(body, level=1)
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 200:
        raise _invalid("reason", "a string of at most 200 characters")
    return reason
