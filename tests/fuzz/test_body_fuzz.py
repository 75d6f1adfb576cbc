"""Hypothesis-generated request bodies against the validators and the hot path.

Bodies built to hurt: nesting far past the limit, lone surrogates in values and keys, NaN,
Infinity, numbers that overflow a double, integers of hundreds of digits, wrong types,
unknown fields, bytes that are not JSON. Whatever arrives, a validator either accepts or
raises ``RequestInvalid``, what it accepts every later stage can take, and the hot path
answers 2xx or 4xx in JSON: never an exception, never a 500. Seconds in all.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_core import jsonsafe
from gateway_core.ratelimit import TokenBuckets
from push_app import services, validation
from push_app.api.hotpath import PushRoutes
from push_app.validation import RequestInvalid

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


def _with_surrogate(parts: tuple[str, int, str]) -> str:
    before, code, after = parts
    return before + chr(code) + after


texts = st.one_of(
    st.text(max_size=12),
    st.tuples(st.text(max_size=4), st.integers(0xD800, 0xDFFF), st.text(max_size=4))
    .map(_with_surrogate),
    st.sampled_from(["", "\x00", "u1", "a b", "x" * 201, "gw_x_y"]),
)
numbers = st.one_of(
    st.integers(-(10 ** 30), 10 ** 30),
    st.integers().map(lambda n: n * 10 ** 300),  # hundreds of digits: past a double
    st.sampled_from([2 ** 1024 - 2 ** 970, 2 ** 1024 - 2 ** 970 - 1, 10 ** 400]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value] if levels % 2 else {"k": value}
    return value


deep = st.integers(1, 5000).map(nested)
user_lists = st.one_of(
    st.lists(st.sampled_from(["u1", "u2", "a:b@c.d-e_f"]), min_size=1, max_size=3),
    st.lists(values, max_size=3), values,
)
known_fields = st.fixed_dictionaries({}, optional={
    "users": user_lists, "broadcast": st.one_of(st.booleans(), values),
    "data": st.one_of(values, deep), "topic": st.one_of(texts, values),
    "ttl": st.one_of(st.integers(-5, 10 ** 7), values),
    "idempotency_key": st.one_of(texts, values),
})
push_bodies = st.one_of(
    known_fields,
    st.tuples(known_fields, st.dictionaries(texts, values, min_size=1, max_size=2))
    .map(lambda both: {**both[1], **both[0]}),  # with unknown fields
    values, deep,
)


def strict_json(raw: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(name)
    return json.loads(raw, parse_constant=refuse)


def depth(value: Any) -> int:
    """Levels of arrays and objects, iteratively."""
    deepest = 0
    todo = [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            todo.extend((v, level + 1) for v in (item.values() if isinstance(item, dict)
                                                 else item))
    return deepest


# --- the validators ---------------------------------------------------------------------

@FUZZ
@given(body=push_bodies)
def test_a_push_body_is_accepted_whole_or_refused_with_a_400(body):
    try:
        req = validation.push_request(body)
    except RequestInvalid as exc:
        assert exc.status in (400, 413)
        json.dumps({"detail": exc.detail, "fields": exc.fields}, ensure_ascii=False).encode()
        return
    # Accepted: every later stage can take it (store, encode, send, parse in any client).
    data = strict_json(req.data_json)
    req.data_json.encode()
    assert depth(data) <= jsonsafe.MAX_DEPTH - 1
    for text in (req.topic, req.idempotency_key, *(req.users or ())):
        if text is not None:
            text.encode()
    assert not any(isinstance(n, float) and not math.isfinite(n) for n in _leaves(data))


def _leaves(value: Any) -> Iterator[Any]:
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        else:
            yield item


@FUZZ
@given(items=st.lists(push_bodies, min_size=1, max_size=5))
def test_a_batch_answers_every_item(items):
    results, good = validation.batch_requests(items)
    assert len(results) == len(items)
    assert {i for i, r in enumerate(results) if r is None} == {i for i, _ in good}


@FUZZ
@given(body=st.one_of(
    st.fixed_dictionaries({}, optional={"user": st.one_of(texts, values),
                                        "ttl": st.one_of(st.integers(), values),
                                        "meta": st.one_of(values, deep),
                                        "reason": st.one_of(texts, values)}),
    values, deep))
def test_token_and_disconnect_bodies_are_accepted_or_refused_with_a_400(body):
    for check in (validation.token_request, validation.disconnect_reason):
        try:
            check(body)
        except RequestInvalid as exc:
            assert exc.status == 400
            json.dumps({"detail": exc.detail, "fields": exc.fields},
                       ensure_ascii=False).encode()


# --- the hot path -------------------------------------------------------------------------

def _raw(body: Any) -> bytes:
    try:
        return json.dumps(body).encode()  # NaN/Infinity literals, surrogates as \ud800
    except (RecursionError, ValueError):
        return b"[" * 3000 + b"]" * 3000


raw_bodies = st.one_of(
    push_bodies.map(_raw),
    st.lists(push_bodies, min_size=1, max_size=3).map(lambda items: _raw({"pushes": items})),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 200_000).map(lambda n: b'{"users": ["u1"], "data": ' + b"[" * n + b"]" * n
                                + b"}"),
    st.sampled_from([b'{"users": ["u1"], "data": 1e999}', b'{"users": ["u1"], "data": -1e400}',
                     b'{"users": ["u1"], "data": 1' + b"0" * 5000 + b"}",
                     b'{"users": ["u1"], "data": "\\ud800"}', b'{"\\udc00": 1}', b"[" * 9]),
    st.binary(max_size=64),
)


async def _post(app: PushRoutes, path: str, raw: bytes, key: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    events = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if events:
            return events.pop(0)
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": path, "query_string": b"", "scheme": "http",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                    (b"authorization", f"Token {key}".encode()),
                    (b"content-length", str(len(raw)).encode())],
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
    }
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.django_db(transaction=True)
@FUZZ
@given(raw=raw_bodies, batch=st.booleans())
async def test_the_hot_path_answers_2xx_or_4xx_json_whatever_the_body(node, raw, batch):
    if not hasattr(node, "fuzz_key"):
        _, node.fuzz_key = await sync_to_async(services.api_client_create)(name="fuzz")
    node.rate_limits.api_clients = TokenBuckets()  # each example its own budget

    async def inner(scope, receive, send) -> None:  # Django's place: not reached here
        raise AssertionError(scope["path"])

    app = PushRoutes(inner, node=lambda: node)
    status, content = await _post(app, "/api/v1/push/batch" if batch else "/api/v1/push", raw,
                                  node.fuzz_key)
    assert 200 <= status < 500, content[:300]
    answer = strict_json(content.decode())
    assert isinstance(answer, dict)
    assert ("error" in answer) == (status >= 400), answer
