"""POST /api/v1/push and /push/batch as plain ASGI (push_app/api/hotpath.py).

The DRF views answer these routes to Django's test client (tests/unit/test_api.py); real
servers answer them here. Every error case is asked of both and must get the same status,
body and headers, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from gateway_core import metrics
from gateway_core.messages import PushMessage
from gateway_core.middleware import bad_hosts
from gateway_node.node import GatewayNode
from push_app import services
from push_app.api.hotpath import PushRoutes
from push_app.models import ApiClient, ApiRejections, PushLog
from push_app.selectors import rejections_since

pytestmark = pytest.mark.django_db(transaction=True)

HOST = "127.0.0.1:8000"


class Inner:
    """Django's place behind the hot path: records what it was handed."""

    def __init__(self) -> None:
        self.paths: list[tuple[str, str]] = []

    async def __call__(self, scope, receive, send) -> None:
        self.paths.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class Answer:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        start = messages[0] if messages else {}
        self.status = start.get("status")
        self.headers = {k.decode(): v.decode() for k, v in start.get("headers", [])}
        self.content = b"".join(m.get("body", b"") for m in messages[1:])

    def json(self) -> Any:
        return json.loads(self.content)


@pytest.fixture
def inner() -> Inner:
    return Inner()


@pytest.fixture
def app(node: GatewayNode, inner: Inner) -> PushRoutes:
    return PushRoutes(inner, node=lambda: node)


async def call(app: PushRoutes, path: str, body: Any = None, *, method: str = "POST",
               key: str | None = None, headers: dict[str, str] | None = None,
               raw: bytes | None = None, chunks: Iterable[bytes] | None = None,
               content_type: str | None = "application/json",
               peer: str = "127.0.0.1") -> Answer:
    """One request through the ASGI app, as a server would make it."""
    if raw is None and body is not None:
        raw = json.dumps(body).encode()
    head = {"host": HOST}
    if content_type is not None:
        head["content-type"] = content_type
    if key is not None:
        head["authorization"] = f"Token {key}"
    if chunks is None:
        parts = [raw or b""]
        head["content-length"] = str(len(raw or b""))
    else:
        parts = list(chunks)
        head["transfer-encoding"] = "chunked"
    head.update(headers or {})
    events = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
              for i, p in enumerate(parts)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if events:
            return events.pop(0)
        await asyncio.Event().wait()  # a server blocks until the client goes
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": method, "path": path, "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in head.items()],
        "server": ("127.0.0.1", 8000), "client": (peer, 50000), "scheme": "http",
    }
    await app(scope, receive, send)
    return Answer(sent)


async def new_key(name: str = "billing") -> tuple[ApiClient, str]:
    return await sync_to_async(services.api_client_create)(name=name)


def pushes_counted(node: GatewayNode, client: str, status: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "gateway_pushes_total",
        {"node": node.node_id, "app": "default", "client": client, "status": status})
    return value or 0.0


# --- accepted pushes ------------------------------------------------------------------------

async def test_push_is_stored_relayed_and_answered_202(app, node: GatewayNode):
    _, key = await new_key()
    before = pushes_counted(node, "billing", "accepted")
    answer = await call(app, "/api/v1/push", {"users": ["u1", "u2", "u1"], "data": {"n": 1},
                                              "topic": "news", "ttl": 60}, key=key)
    assert answer.status == 202, answer.content
    assert answer.headers["content-type"] == "application/json"
    assert int(answer.headers["content-length"]) == len(answer.content)
    body = answer.json()
    assert body == {"id": body["id"], "status": "accepted", "targets": 2}
    log = await PushLog.objects.select_related("client").aget(id=body["id"])
    assert (log.users, log.target_count, log.topic, log.data_json, log.ttl_s, log.client.name,
            log.accepted_node) == (["u1", "u2"], 2, "news", '{"n":1}', 60, "billing",
                                   node.node_id)
    (message,) = node.relay.pending
    assert isinstance(message, PushMessage)
    assert (message.id, message.users, message.data_json) == (body["id"], ("u1", "u2"),
                                                              '{"n":1}')
    assert pushes_counted(node, "billing", "accepted") == before + 1


async def test_concurrent_pushes_are_one_group_commit(app, node: GatewayNode):
    _, key = await new_key()
    answers = await asyncio.gather(*(
        call(app, "/api/v1/push", {"users": [f"u{i}"], "data": i}, key=key) for i in range(20)
    ))
    assert [a.status for a in answers] == [202] * 20
    assert node.writer.stored == 20 and node.writer.commits < 20
    assert await PushLog.objects.acount() == 20
    assert {m.id for m in node.relay.pending} == {a.json()["id"] for a in answers}


async def test_broadcast_and_chunked_body(app):
    _, key = await new_key()
    raw = json.dumps({"broadcast": True, "data": "hi"}).encode()
    answer = await call(app, "/api/v1/push", key=key,
                        chunks=[raw[i:i + 5] for i in range(0, len(raw), 5)])
    assert answer.status == 202, answer.content
    assert answer.json()["targets"] == "all"
    with override_settings(GATEWAY_MAX_REQUEST_BYTES=10):
        too_big = await call(app, "/api/v1/push", key=key, chunks=[raw[:8], raw[8:]])
    assert too_big.status == 413
    assert too_big.json()["error"] == "payload_too_large"


async def test_batch_mixed_results_in_order(app, node: GatewayNode):
    _, key = await new_key()
    pushes = [{"users": ["u1"], "data": 1}, {"users": [], "data": 2},
              {"broadcast": True, "data": 3}, {"users": ["u2"], "data": "x" * 100}]
    with override_settings(GATEWAY_MAX_PAYLOAD_BYTES=50):
        answer = await call(app, "/api/v1/push/batch", {"pushes": pushes}, key=key)
    assert answer.status == 202
    results = answer.json()["results"]
    assert results[0]["status"] == "accepted" and set(results[0]) == {"id", "status"}
    assert results[1]["error"] == "invalid" and "users" in results[1]["detail"]
    assert results[2]["status"] == "accepted"
    assert results[3] == {"error": "payload_too_large", "detail": results[3]["detail"]}
    ids = {results[0]["id"], results[2]["id"]}
    assert {log.id async for log in PushLog.objects.all()} == ids
    assert {m.id for m in node.relay.pending} == ids
    assert pushes_counted(node, "billing", "rejected") >= 2


# --- idempotency ----------------------------------------------------------------------------

async def test_idempotency_key_answers_200_with_the_first_push(app, node: GatewayNode):
    _, key = await new_key()
    body = {"users": ["u1"], "data": 1, "idempotency_key": "order-1"}
    first = await call(app, "/api/v1/push", body, key=key)
    again = await call(app, "/api/v1/push", {**body, "data": 2}, key=key)
    assert (first.status, again.status) == (202, 200)
    assert again.json() == {"id": first.json()["id"], "status": "accepted", "targets": 1}
    assert await PushLog.objects.acount() == 1
    assert [m.id for m in node.relay.pending] == [first.json()["id"]]


async def test_concurrent_duplicate_keys_make_one_push(app):
    _, key = await new_key()
    body = {"users": ["u1"], "data": 1, "idempotency_key": "order-2"}
    answers = await asyncio.gather(*(call(app, "/api/v1/push", body, key=key)
                                     for _ in range(5)))
    assert sorted(a.status for a in answers) == [200, 200, 200, 200, 202]
    assert len({a.json()["id"] for a in answers}) == 1
    assert await PushLog.objects.acount() == 1


async def test_batch_repeats_a_key_within_itself(app):
    _, key = await new_key()
    item = {"users": ["u1"], "data": 1, "idempotency_key": "k"}
    answer = await call(app, "/api/v1/push/batch", {"pushes": [item, item, {"users": ["u2"],
                                                                         "data": 2}]}, key=key)
    results = answer.json()["results"]
    assert results[0]["id"] == results[1]["id"] != results[2]["id"]
    assert await PushLog.objects.acount() == 2


# --- keys -----------------------------------------------------------------------------------

async def test_a_cached_key_loses_its_pushes_the_moment_it_is_revoked(app):
    row, key = await new_key()
    assert (await call(app, "/api/v1/push", {"users": ["u"], "data": 1}, key=key)).status == 202
    await ApiClient.objects.filter(pk=row.pk).aupdate(is_active=False)
    answer = await call(app, "/api/v1/push", {"users": ["u"], "data": 2}, key=key)
    assert (answer.status, answer.json()["error"]) == (403, "forbidden")
    await ApiClient.objects.filter(pk=row.pk).aupdate(is_active=True)
    assert (await call(app, "/api/v1/push", {"users": ["u"], "data": 3}, key=key)).status == 202
    await sync_to_async(services.api_client_rotate)(client=await ApiClient.objects.aget(pk=row.pk))
    answer = await call(app, "/api/v1/push/batch", {"pushes": [{"users": ["u"], "data": 4}]},
                        key=key)
    assert (answer.status, answer.json()["error"]) == (401, "unauthorized")
    assert answer.headers["www-authenticate"] == "Token"
    assert await PushLog.objects.acount() == 2


async def test_use_is_recorded_on_the_client(app):
    row, key = await new_key()
    await call(app, "/api/v1/push", {"users": ["u"], "data": 1}, key=key)
    await row.arefresh_from_db()
    assert row.last_used_at is not None


async def test_rate_limit_is_429_with_retry_after(app, node, monkeypatch):
    monkeypatch.setattr(node.rate_limits.api_clients, "timer", lambda: 100.0)
    _, key = await new_key()
    with override_settings(GATEWAY_API_RATE_PER_SECOND=2):
        for n in range(2):
            answer = await call(app, "/api/v1/push", {"users": ["u"], "data": n}, key=key)
            assert answer.status == 202
        answer = await call(app, "/api/v1/push", {"users": ["u"], "data": 3}, key=key)
    assert (answer.status, answer.json()["error"]) == (429, "rate_limited")
    assert int(answer.headers["retry-after"]) >= 1


# --- the same errors as the DRF views -------------------------------------------------------

REVOKED = "__revoked__"
GOOD = {"users": ["u1"], "data": 1}
ERROR_CASES = [
    # (name, path, body or raw bytes, key, content type, settings)
    ("no key", "/api/v1/push", GOOD, None, "application/json", {}),
    ("bare Token", "/api/v1/push", GOOD, "", "application/json", {}),
    ("three parts", "/api/v1/push", GOOD, "a b", "application/json", {}),
    ("unknown key", "/api/v1/push", GOOD, "gw_nope_nope", "application/json", {}),
    ("not a gateway key", "/api/v1/push", GOOD, "not-a-gateway-key", "application/json", {}),
    ("deactivated", "/api/v1/push", GOOD, REVOKED, "application/json", {}),
    ("bad json", "/api/v1/push", b'{"users": [', "KEY", "application/json", {}),
    ("NaN", "/api/v1/push", b'{"users": ["u1"], "data": NaN}', "KEY", "application/json", {}),
    ("bad utf-8", "/api/v1/push", b'{"users": ["\xff"]}', "KEY", "application/json", {}),
    ("text body", "/api/v1/push", b"users=u1", "KEY", "text/plain", {}),
    ("text batch", "/api/v1/push/batch", b"users=u1", "KEY", "text/plain", {}),
    ("json with charset", "/api/v1/push", {"users": ["bad user"], "data": 1}, "KEY",
     "application/json; charset=utf-8", {}),
    ("empty body", "/api/v1/push", b"", "KEY", "application/json", {}),
    ("not an object", "/api/v1/push", [1, 2], "KEY", "application/json", {}),
    ("unknown field", "/api/v1/push", {**GOOD, "extra": 1}, "KEY", "application/json", {}),
    ("bad user", "/api/v1/push", {"users": ["bad user"], "data": 1}, "KEY",
     "application/json", {}),
    ("payload too large", "/api/v1/push", {"users": ["u"], "data": "x" * 20}, "KEY",
     "application/json", {"GATEWAY_MAX_PAYLOAD_BYTES": 10}),
    ("request too large", "/api/v1/push", {"users": ["u"] * 50, "data": 1}, "KEY",
     "application/json", {"GATEWAY_MAX_REQUEST_BYTES": 100}),
    ("request too large without a key", "/api/v1/push", {"users": ["u"] * 50, "data": 1}, None,
     "application/json", {"GATEWAY_MAX_REQUEST_BYTES": 100}),
    ("batch too large", "/api/v1/push/batch",
     {"pushes": [{"users": ["u"], "data": i} for i in range(20)]}, "KEY", "application/json",
     {"GATEWAY_MAX_REQUEST_BYTES": 100}),
    ("batch empty", "/api/v1/push/batch", {"pushes": []}, "KEY", "application/json", {}),
    ("batch missing", "/api/v1/push/batch", {"push": []}, "KEY", "application/json", {}),
    ("batch not an object", "/api/v1/push/batch", [1], "KEY", "application/json", {}),
    ("batch over the limit", "/api/v1/push/batch",
     {"pushes": [{"users": ["u"], "data": i} for i in range(3)]}, "KEY", "application/json",
     {"GATEWAY_MAX_BATCH": 2}),
    ("too many users", "/api/v1/push", {"users": ["a", "b", "c"], "data": 1}, "KEY",
     "application/json", {"GATEWAY_MAX_USERS_PER_PUSH": 2}),
]


@pytest.mark.parametrize(("name", "path", "body", "key", "content_type", "overrides"),
                         ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
async def test_errors_match_the_drf_views(app, name, path, body, key, content_type, overrides):
    row, real_key = await new_key()
    if key == REVOKED:
        await ApiClient.objects.filter(pk=row.pk).aupdate(is_active=False)
    key = real_key if key in ("KEY", REVOKED) else key
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    def drf() -> Any:
        client = APIClient()
        if key is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Token {key}".rstrip())
        return client.post(path, data=raw, content_type=content_type)

    with override_settings(**overrides):
        theirs = await sync_to_async(drf)()
        ours = await call(app, path, raw=raw, content_type=content_type,
                          headers={} if key is None else {"authorization":
                                                          f"Token {key}".rstrip()})
    assert ours.status == theirs.status_code >= 400, (ours.content, theirs.content)
    assert ours.json() == theirs.json()
    for header in ("WWW-Authenticate", "Retry-After"):
        assert ours.headers.get(header.lower()) == theirs.headers.get(header), header
    assert await PushLog.objects.acount() == 0


async def test_a_full_relay_backlog_is_503_like_drf(app, monkeypatch):
    monkeypatch.setattr(services, "MAX_RELAY_BACKLOG", -1)
    _, key = await new_key()
    for path, body in (("/api/v1/push", GOOD), ("/api/v1/push/batch", {"pushes": [GOOD]}),
                       ("/api/v1/push", {**GOOD, "idempotency_key": "k"})):
        answer = await call(app, path, body, key=key)
        assert (answer.status, answer.json()["error"]) == (503, "broker_unavailable")
    assert await PushLog.objects.acount() == 0


# --- what the hot path leaves to Django -----------------------------------------------------

async def test_other_methods_and_paths_go_to_django(app, inner: Inner):
    for method, path in (("GET", "/api/v1/push"), ("POST", "/api/v1/push/"),
                         ("POST", "/api/v1/tokens"), ("OPTIONS", "/api/v1/push/batch"),
                         ("POST", "/api/v1/push/batch/x")):
        assert (await call(app, path, GOOD, method=method)).status == 299
    assert len(inner.paths) == 5


async def test_a_host_outside_allowed_hosts_is_400(app, caplog, monkeypatch):
    monkeypatch.setattr(bad_hosts, "clock", lambda: 5000.0)
    bad_hosts.reset()
    _, key = await new_key()
    for _ in range(3):
        answer = await call(app, "/api/v1/push", GOOD, key=key, headers={"host": "evil.example"})
        assert (answer.status, answer.json()["error"]) == (400, "bad_request")
    assert await PushLog.objects.acount() == 0
    # Logged once (a minute), as a warning without a traceback, as under Django.
    logged = [r for r in caplog.records if "evil.example" in r.getMessage()]
    assert [(r.levelname, r.exc_info) for r in logged] == [("WARNING", None)]


async def test_a_client_gone_before_its_body_gets_nothing(app):
    _, key = await new_key()
    sent: list = []
    events = [{"type": "http.disconnect"}]

    async def receive():
        return events.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/v1/push",
             "headers": [(b"host", HOST.encode()), (b"authorization", f"Token {key}".encode()),
                         (b"content-type", b"application/json"), (b"content-length", b"30")],
             "server": ("127.0.0.1", 8000)}
    await app(scope, receive, send)
    assert sent == []
    assert await PushLog.objects.acount() == 0


# --- bad input (issue #10): 400 from both paths, never 500 ----------------------------------

def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


BAD_INPUT = [
    # (name, path, raw body): each must be a JSON 400 from the hot path and the DRF view.
    ("topic surrogate", "/api/v1/push", b'{"users": ["u1"], "data": 1, "topic": "\\ud800"}'),
    ("data surrogate", "/api/v1/push", b'{"users": ["u1"], "data": {"a": "x\\udc00"}}'),
    ("data key surrogate", "/api/v1/push", b'{"users": ["u1"], "data": {"\\ud800": 1}}'),
    ("key surrogate", "/api/v1/push",
     b'{"users": ["u1"], "data": 1, "idempotency_key": "\\ud800"}'),
    ("field name surrogate", "/api/v1/push", b'{"users": ["u1"], "data": 1, "\\ud800": 1}'),
    ("1e999", "/api/v1/push", b'{"users": ["u1"], "data": 1e999}'),
    ("-1e999", "/api/v1/push", b'{"users": ["u1"], "data": [-1e999]}'),
    ("huge int", "/api/v1/push", b'{"users": ["u1"], "data": 1' + b"0" * 400 + b"}"),
    ("65 levels", "/api/v1/push", b'{"users": ["u1"], "data": ' + deep(64) + b"}"),
    ("100k levels", "/api/v1/push", b'{"users": ["u1"], "data": ' + deep(100_000) + b"}"),
    ("100k levels body", "/api/v1/push", deep(100_000)),
    ("100k levels batch", "/api/v1/push/batch", b'{"pushes": ' + deep(100_000) + b"}"),
    ("unterminated 100k", "/api/v1/push", b"[" * 100_000),
]


@pytest.mark.parametrize(("name", "path", "raw"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
async def test_bad_input_is_a_json_400_on_both_paths(app, name, path, raw):
    _, key = await new_key()

    def drf() -> Any:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        return client.post(path, data=raw, content_type="application/json")

    theirs = await sync_to_async(drf)()
    ours = await call(app, path, raw=raw, key=key)
    assert ours.status == theirs.status_code == 400, (ours.content[:200], theirs.content[:200])
    assert ours.json() == theirs.json()
    assert ours.json()["error"] in ("invalid", "bad_json")
    assert await PushLog.objects.acount() == 0


async def test_64_levels_pass_on_both_paths(app):
    _, key = await new_key()
    raw = b'{"users": ["u1"], "data": ' + deep(63) + b"}"
    ours = await call(app, "/api/v1/push", raw=raw, key=key)
    assert ours.status == 202, ours.content


async def test_a_poison_item_fails_alone_in_a_batch(app, node: GatewayNode):
    _, key = await new_key()
    raw = (b'{"pushes": [{"users": ["u1"], "data": 1}, '
           b'{"users": ["u1"], "data": 2, "topic": "\\ud800"}, {"users": ["u2"], "data": 3}]}')
    answer = await call(app, "/api/v1/push/batch", raw=raw, key=key)
    assert answer.status == 202, answer.content
    first, bad, last = answer.json()["results"]
    assert bad["error"] == "invalid" and "topic" in bad["detail"]
    assert {log.id async for log in PushLog.objects.all()} == {first["id"], last["id"]}


async def test_a_poison_push_harms_no_other_clients_pushes(app):
    # Concurrent requests share a group commit: the bad one must not fail the others.
    _, key = await new_key()
    _, other = await new_key("shop")
    poison = b'{"users": ["u1"], "data": 1, "topic": "\\ud800"}'
    answers = await asyncio.gather(
        *(call(app, "/api/v1/push", {"users": ["u2"], "data": n}, key=other) for n in range(5)),
        call(app, "/api/v1/push", raw=poison, key=key),
    )
    assert [a.status for a in answers] == [202] * 5 + [400]
    assert await PushLog.objects.acount() == 5


# --- a database that stays locked (issue #10) -----------------------------------------------

@contextlib.contextmanager
def database_locked() -> Iterator[None]:
    """Another connection holds SQLite's write lock, as a long transaction elsewhere would.

    The test database is SQLite's shared-cache memory database, whose writers meet the lock
    at once (``SQLITE_LOCKED``) instead of after the busy timeout (20 s in production): the
    same OperationalError, without the wait."""
    name = connection.settings_dict["NAME"]
    if connection.vendor != "sqlite" or "mode=memory" not in name:
        pytest.skip("needs the shared-cache SQLite test database")
    holder = sqlite3.connect(name, uri=True, isolation_level=None, check_same_thread=False)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("UPDATE push_app_apiclient SET name = name")
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.parametrize("body", [{**GOOD, "idempotency_key": "k1"}, GOOD],
                         ids=["keyed", "unkeyed"])
async def test_a_locked_database_answers_503_json_on_both_paths(app, body):
    _, key = await new_key()
    await call(app, "/api/v1/push", {"users": ["warm"], "data": 0}, key=key)  # key cached

    def drf() -> Any:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        return client.post("/api/v1/push", data=body, format="json")

    with database_locked():
        ours = await call(app, "/api/v1/push", body, key=key)
        theirs = await sync_to_async(drf)()
    assert (ours.status, ours.json()["error"]) == (503, "unavailable"), ours.content
    assert (theirs.status_code, theirs.json()["error"]) == (503, "unavailable")
    assert ours.headers["content-type"] == "application/json"
    assert (await call(app, "/api/v1/push", body, key=key)).status == 202  # lock gone


# --- failed authentication is throttled per address (issue #10) ----------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


WELL_FORMED_UNKNOWN = "gw_0123abcd_" + "A" * 43


async def test_failed_authentication_is_throttled_per_address(app, node, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(node.rate_limits.auth_failures, "timer", clock)
    _, good = await new_key()
    assert (await call(app, "/api/v1/push", GOOD, key=good)).status == 202  # now cached
    with override_settings(GATEWAY_API_AUTH_FAILURES_PER_MINUTE=3):
        for key in ("nope", WELL_FORMED_UNKNOWN, "gw_x_y"):
            answer = await call(app, "/api/v1/push", GOOD, key=key, peer="10.0.0.9")
            assert answer.status == 401
        refused = await call(app, "/api/v1/push", GOOD, key=WELL_FORMED_UNKNOWN, peer="10.0.0.9")
        assert (refused.status, refused.json()["error"]) == (429, "rate_limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 20
        # Another address is not held back, nor a key this process already knows good.
        assert (await call(app, "/api/v1/push", GOOD, key="nope", peer="10.0.0.8")).status == 401
        assert (await call(app, "/api/v1/push", GOOD, key=good, peer="10.0.0.9")).status == 202
        clock.now += 20  # a minute's budget of 3 refills one attempt in 20 s
        assert (await call(app, "/api/v1/push", GOOD, key="nope", peer="10.0.0.9")).status == 401
        assert (await call(app, "/api/v1/push", GOOD, key="nope", peer="10.0.0.9")).status == 429


async def test_failed_authentication_costs_no_lookup_when_it_need_not(app, node, monkeypatch):
    lookups: list[str] = []
    real_db = node.db

    async def counting_db(fn, *args):
        lookups.append(fn.__name__)
        return await real_db(fn, *args)

    monkeypatch.setattr(node, "db", counting_db)
    for key in ("not-a-gateway-key", "gw_short_key", "gw_0123abcd_" + "A" * 42 + "!"):
        assert (await call(app, "/api/v1/push", GOOD, key=key)).status == 401
    assert lookups == [], "a key whose format is impossible is refused without a lookup"
    for _ in range(3):
        assert (await call(app, "/api/v1/push", GOOD, key=WELL_FORMED_UNKNOWN)).status == 401
    assert lookups == ["_look_up_key"], "an unknown key is remembered for a while"


# --- refused requests are counted per client (issue #17) -----------------------------------

BAD = b'{"users": [], "data": 1}'
UNKNOWN_KEY = "gk_" + "x" * 40


def drf_post(path: str, raw: bytes, key: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.post(path, data=raw, content_type="application/json").status_code


async def test_400_and_401_from_both_paths_are_counted_for_their_client(
        app, node: GatewayNode):
    billing, key = await new_key("billing")
    await new_key("other")
    assert (await call(app, "/api/v1/push", raw=BAD, key=key)).status == 400
    assert (await call(app, "/api/v1/push", raw=BAD, key=UNKNOWN_KEY)).status == 401
    assert await sync_to_async(drf_post)("/api/v1/push", BAD, key) == 400
    assert await sync_to_async(drf_post)("/api/v1/push", BAD, UNKNOWN_KEY) == 401
    assert (await call(app, "/api/v1/push", body={"users": ["u1"], "data": 1},
                       key=key)).status == 202
    assert await ApiRejections.objects.acount() == 0  # counted in memory only

    await node.write_rejections()

    rows = await sync_to_async(rejections_since)(since=timezone.now() - timedelta(hours=1))
    by_name = {r.client_name: r for r in rows}
    assert set(by_name) == {"billing", "unauthenticated"}
    assert by_name["billing"].client_id == billing.pk
    assert by_name["billing"].total == 2 and by_name["billing"].by_status["400"] == 2
    assert by_name["billing"].last_code == "invalid"
    assert by_name["unauthenticated"].total == 2
    assert by_name["unauthenticated"].by_status["401"] == 2
    assert by_name["unauthenticated"].last_status == 401


async def test_a_failed_write_keeps_the_counts(app, node: GatewayNode, monkeypatch):
    _, key = await new_key("billing")
    await call(app, "/api/v1/push", raw=BAD, key=key)

    write = node.rejections.write
    failing = [True]

    def flaky(taken):
        if failing.pop():
            raise RuntimeError("database down")
        write(taken)

    monkeypatch.setattr(node.rejections, "write", flaky)
    with pytest.raises(RuntimeError):
        await node.write_rejections()
    failing.append(False)
    await node.write_rejections()
    assert [r.total async for r in ApiRejections.objects.all()] == [1]


async def test_an_unknown_push_id_is_a_404_counted_for_its_client(node: GatewayNode):
    billing, key = await new_key("billing")

    def drf_get_missing() -> int:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        return client.get("/api/v1/push/p_missing").status_code

    assert await sync_to_async(drf_get_missing)() == 404
    await node.write_rejections()
    row = await ApiRejections.objects.aget()
    assert (row.client_id, row.s404, row.last_code) == (billing.pk, 1, "not_found")


# --- refusals given before or beside the views are counted too (issue #17) ----------------

def drf_request(method: str, path: str, key: str | None, raw: bytes = b"{}",
                host: str = "localhost") -> int:
    """One request through Django's whole middleware stack, as the DRF routes get it."""
    client = APIClient()
    if key is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    call_ = getattr(client, method)
    kwargs: dict[str, Any] = {"HTTP_HOST": host}
    if method == "post":
        kwargs.update(data=raw, content_type="application/json")
    return int(call_(path, **kwargs).status_code)


async def counts_by_client(node: GatewayNode) -> dict[int | None, tuple[int, ...]]:
    """``client_id -> (total, 400, 403, 404, 413)`` as written by the node."""
    await node.write_rejections()
    return {r.client_id: (r.total, r.s400, r.s403, r.s404, r.s413)
            async for r in ApiRejections.objects.all()}


async def test_refusals_before_the_views_are_counted_for_the_keys_client(node: GatewayNode):
    billing, key = await new_key("billing")
    big = b'{"users": ["u1"], "data": "' + b"x" * 200 + b'"}'
    with override_settings(GATEWAY_MAX_REQUEST_BYTES=100):
        assert await sync_to_async(drf_request)("post", "/api/v1/tokens", key, big) == 413
        assert await sync_to_async(drf_request)("post", "/api/v1/tokens", None, big) == 413
    assert await sync_to_async(drf_request)("get", "/api/v1/users/u1/presence", key,
                                            host="evil.example") == 400
    assert await sync_to_async(drf_request)("get", "/api/v1/no-such-thing", key) == 404
    assert await sync_to_async(drf_request)("get", "/api/nowhere", None) == 404
    # A made-up key is no one's: unauthenticated, like a request without one.
    assert await sync_to_async(drf_request)("get", "/api/v1/no-such-thing", UNKNOWN_KEY) == 404

    counts = await counts_by_client(node)
    assert counts == {billing.pk: (3, 1, 0, 1, 1), None: (3, 0, 0, 2, 1)}


async def test_views_refusals_are_counted_once(node: GatewayNode):
    billing, key = await new_key("billing")
    assert await sync_to_async(drf_request)("get", "/api/v1/push/p_missing", key) == 404
    assert await sync_to_async(drf_request)("post", "/api/v1/tokens", key, b"[]") == 400
    assert await counts_by_client(node) == {billing.pk: (2, 1, 0, 1, 0)}


async def test_a_deactivated_clients_403_counts_against_it_on_both_paths(
        app, node: GatewayNode):
    retired, key = await new_key("retired")
    await ApiClient.objects.filter(pk=retired.pk).aupdate(is_active=False)
    assert (await call(app, "/api/v1/push", GOOD, key=key)).status == 403
    assert await sync_to_async(drf_request)("get", "/api/v1/users/u1/presence", key) == 403
    assert await counts_by_client(node) == {retired.pk: (2, 0, 2, 0, 0)}


async def test_hot_path_refusals_before_authentication_name_the_keys_client(
        app, node: GatewayNode, monkeypatch):
    monkeypatch.setattr(bad_hosts, "clock", lambda: 5000.0)
    billing, key = await new_key("billing")
    assert (await call(app, "/api/v1/push", GOOD, key=key,
                       headers={"host": "evil.example"})).status == 400
    with override_settings(GATEWAY_MAX_REQUEST_BYTES=10):
        assert (await call(app, "/api/v1/push", GOOD, key=key)).status == 413
        assert (await call(app, "/api/v1/push", GOOD, key=UNKNOWN_KEY)).status == 413
        assert (await call(app, "/api/v1/push", GOOD)).status == 413
    assert await counts_by_client(node) == {billing.pk: (2, 1, 0, 0, 1), None: (2, 0, 0, 0, 2)}
