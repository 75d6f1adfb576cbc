from __future__ import annotations

import json
from datetime import timedelta

import jsonschema
import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from gateway_core.conf import gateway_settings
from gateway_core.messages import ControlMessage, PushMessage
from gateway_core.tokens import decode_token
from gateway_node.node import GatewayNode
from push_app import services, validation
from push_app.models import ApiClient, AuditEvent, PushLog, PushStatus
from push_app.services import api_client_create
from push_app.validation import RequestInvalid
from sessions_app.models import Node as NodeRow
from sessions_app.models import SessionRecord
from tests.support.sessions import make_session

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("node")]


@pytest.fixture
def submitted(node: GatewayNode, monkeypatch) -> list:
    """What the views hand to the relay."""
    sent: list = []
    monkeypatch.setattr(node.relay, "submit_threadsafe", sent.append)
    return sent


def client_for(name: str) -> tuple[APIClient, ApiClient]:
    row, key = api_client_create(name=name)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return api, row


@pytest.fixture
def api() -> APIClient:
    return client_for("billing")[0]


def post(api: APIClient, path: str, body) -> object:
    return api.post(path, body, format="json")


def assert_error(response, status: int, code: str, *, fields: list[str] | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    expected = {"error", "detail", "fields"} if fields else {"error", "detail"}
    assert set(body) == expected
    if fields:
        assert sorted(body["fields"]) == sorted(fields)
    return body


# --- POST /push --------------------------------------------------------------------------

def test_push_is_accepted_stored_and_queued(api, submitted, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = post(api, "/api/v1/push",
                        {"users": ["u1", "u2", "u1"], "data": {"n": 1}, "topic": "news",
                         "ttl": 60})
    assert response.status_code == 202
    body = response.json()
    assert body == {"id": body["id"], "status": "accepted", "targets": 2}
    log = PushLog.objects.get(id=body["id"])
    assert log.status == PushStatus.ACCEPTED  # the node is not running: nothing published
    assert (log.users, log.target_count, log.topic, log.data_json, log.ttl_s) == (
        ["u1", "u2"], 2, "news", '{"n":1}', 60)
    assert log.client.name == "billing"
    assert log.accepted_node == gateway_settings.node_id
    assert log.expires_at == log.created_at + timedelta(seconds=60)
    assert len(submitted) == 1
    message = submitted[0]
    assert isinstance(message, PushMessage)
    assert (message.id, message.users, message.data_json) == (body["id"], ("u1", "u2"), '{"n":1}')


def test_nothing_is_queued_before_the_commit(api, submitted, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert post(api, "/api/v1/push", {"users": ["u1"], "data": 1}).status_code == 202
    assert submitted == []
    assert len(callbacks) == 1


def test_broadcast_push(api):
    response = post(api, "/api/v1/push", {"broadcast": True, "data": "hi"})
    assert response.status_code == 202
    assert response.json()["targets"] == "all"
    log = PushLog.objects.get(id=response.json()["id"])
    assert (log.broadcast, log.users, log.target_count) == (True, [], 0)


def test_push_validation_error_is_400_with_fields(api):
    response = post(api, "/api/v1/push", {"users": ["bad user"], "data": 1})
    assert_error(response, 400, "invalid", fields=["users"])
    assert PushLog.objects.count() == 0


def test_push_unknown_field_is_400(api):
    assert_error(post(api, "/api/v1/push", {"users": ["u"], "data": 1, "extra": 1}), 400,
                 "invalid", fields=["extra"])


def test_bad_json_is_400(api):
    response = api.post("/api/v1/push", data=b'{"users": [', content_type="application/json")
    assert_error(response, 400, "bad_json")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_400(api, constant):
    raw = '{"users": ["u1"], "data": ' + constant + "}"
    response = api.post("/api/v1/push", data=raw, content_type="application/json")
    assert_error(response, 400, "bad_json")
    assert PushLog.objects.count() == 0


def test_payload_too_large_is_413(api):
    with override_settings(GATEWAY_MAX_PAYLOAD_BYTES=10):
        response = post(api, "/api/v1/push", {"users": ["u"], "data": "x" * 20})
    assert_error(response, 413, "payload_too_large")
    assert PushLog.objects.count() == 0


def test_request_body_too_large_is_413(api):
    with override_settings(GATEWAY_MAX_REQUEST_BYTES=100):
        response = post(api, "/api/v1/push", {"users": ["u"] * 50, "data": 1})
        batch = post(api, "/api/v1/push/batch",
                     {"pushes": [{"users": ["u"], "data": i} for i in range(20)]})
    assert_error(response, 413, "payload_too_large")
    assert_error(batch, 413, "payload_too_large")
    assert PushLog.objects.count() == 0


def test_wrong_media_type_is_415(api):
    response = api.post("/api/v1/push", data="users=u1", content_type="text/plain")
    assert_error(response, 415, "unsupported_media_type")


def test_wrong_method_is_405_json(api):
    assert_error(api.get("/api/v1/push"), 405, "method_not_allowed")


def test_missing_key_is_401():
    response = post(APIClient(), "/api/v1/push", {"users": ["u"], "data": 1})
    assert_error(response, 401, "unauthorized")
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize("header", ["Token gw_nope_nope", "Token", "Token a b",
                                    "Token not-a-gateway-key"])
def test_bad_key_is_401(header):
    client_for("billing")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=header)
    assert_error(post(api, "/api/v1/push", {"users": ["u"], "data": 1}), 401, "unauthorized")


def test_wrong_key_with_a_real_prefix_is_401():
    _, key = api_client_create(name="real")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key[:-3]}abc")
    assert_error(post(api, "/api/v1/push", {"users": ["u"], "data": 1}), 401, "unauthorized")


def test_deactivated_client_is_403():
    api, row = client_for("retired")
    row.is_active = False
    row.save()
    assert_error(post(api, "/api/v1/push", {"users": ["u"], "data": 1}), 403, "forbidden")
    assert PushLog.objects.count() == 0


def test_use_is_recorded_on_the_client():
    api, row = client_for("busy")
    assert row.last_used_at is None
    post(api, "/api/v1/push", {"users": ["u"], "data": 1})
    row.refresh_from_db()
    assert row.last_used_at is not None


def test_rate_limit_is_429_with_retry_after(node: GatewayNode, monkeypatch):
    monkeypatch.setattr(node.rate_limits.api_clients, "timer", lambda: 100.0)
    api, _ = client_for("eager")
    with override_settings(GATEWAY_API_RATE_PER_SECOND=2):
        assert post(api, "/api/v1/push", {"users": ["u"], "data": 1}).status_code == 202
        assert post(api, "/api/v1/push", {"users": ["u"], "data": 2}).status_code == 202
        response = post(api, "/api/v1/push", {"users": ["u"], "data": 3})
        assert_error(response, 429, "rate_limited")
        assert int(response["Retry-After"]) >= 1
        # Another client has its own bucket.
        other, _ = client_for("calm")
        assert post(other, "/api/v1/push", {"users": ["u"], "data": 4}).status_code == 202
    assert PushLog.objects.count() == 3


def test_full_relay_backlog_is_503(api, monkeypatch):
    monkeypatch.setattr(services, "MAX_RELAY_BACKLOG", -1)
    response = post(api, "/api/v1/push", {"users": ["u"], "data": 1})
    assert_error(response, 503, "broker_unavailable")
    assert PushLog.objects.count() == 0


# --- idempotency ---------------------------------------------------------------------------

def test_idempotency_key_answers_200_with_the_first_push(api, submitted,
                                                         django_capture_on_commit_callbacks):
    body = {"users": ["u1"], "data": 1, "idempotency_key": "order-1"}
    with django_capture_on_commit_callbacks(execute=True):
        first = post(api, "/api/v1/push", body)
        again = post(api, "/api/v1/push", {**body, "data": 2})
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json() == {"id": first.json()["id"], "status": "accepted", "targets": 1}
    assert PushLog.objects.count() == 1
    assert len(submitted) == 1


def test_idempotency_key_is_per_client(api):
    body = {"users": ["u1"], "data": 1, "idempotency_key": "order-1"}
    other, _ = client_for("other")
    first = post(api, "/api/v1/push", body)
    second = post(other, "/api/v1/push", body)
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["id"] != second.json()["id"]


def test_idempotency_key_older_than_24h_makes_a_new_push(api):
    body = {"users": ["u1"], "data": 1, "idempotency_key": "order-1"}
    first_id = post(api, "/api/v1/push", body).json()["id"]
    PushLog.objects.filter(id=first_id).update(
        created_at=timezone.now() - timedelta(hours=24, seconds=1))
    response = post(api, "/api/v1/push", body)
    assert response.status_code == 202
    assert response.json()["id"] != first_id
    assert PushLog.objects.count() == 2
    assert PushLog.objects.get(id=first_id).idempotency_key is None
    # Within the window of the new push, the key answers with the new one.
    assert post(api, "/api/v1/push", body).json()["id"] == response.json()["id"]


def test_idempotency_key_just_inside_24h_repeats(api):
    body = {"users": ["u1"], "data": 1, "idempotency_key": "order-1"}
    first_id = post(api, "/api/v1/push", body).json()["id"]
    PushLog.objects.filter(id=first_id).update(
        created_at=timezone.now() - timedelta(hours=23, minutes=59))
    response = post(api, "/api/v1/push", body)
    assert (response.status_code, response.json()["id"]) == (200, first_id)


# --- batch -------------------------------------------------------------------------------

def test_batch_mixed_results_in_order(api, submitted, django_capture_on_commit_callbacks):
    pushes = [
        {"users": ["u1"], "data": 1},
        {"users": [], "data": 2},
        {"broadcast": True, "data": 3},
        {"users": ["u2"], "data": "x" * 100},
    ]
    with override_settings(GATEWAY_MAX_PAYLOAD_BYTES=50), \
            django_capture_on_commit_callbacks(execute=True):
        response = post(api, "/api/v1/push/batch", {"pushes": pushes})
    assert response.status_code == 202
    results = response.json()["results"]
    assert len(results) == 4
    assert results[0]["status"] == "accepted" and set(results[0]) == {"id", "status"}
    assert results[1]["error"] == "invalid" and "users" in results[1]["detail"]
    assert results[2]["status"] == "accepted"
    assert results[3]["error"] == "payload_too_large"
    ids = {results[0]["id"], results[2]["id"]}
    assert set(PushLog.objects.values_list("id", flat=True)) == ids
    assert {m.id for m in submitted} == ids


def test_batch_repeats_an_idempotency_key_within_itself(api):
    item = {"users": ["u1"], "data": 1, "idempotency_key": "k"}
    results = post(api, "/api/v1/push/batch", {"pushes": [item, item]}).json()["results"]
    assert results[0]["id"] == results[1]["id"]
    assert PushLog.objects.count() == 1


def test_batch_limits(api):
    assert_error(post(api, "/api/v1/push/batch", {"pushes": []}), 400, "invalid",
                 fields=["pushes"])
    assert_error(post(api, "/api/v1/push/batch", {"push": []}), 400, "invalid",
                 fields=["pushes"])
    with override_settings(GATEWAY_MAX_BATCH=2):
        response = post(api, "/api/v1/push/batch",
                        {"pushes": [{"users": ["u"], "data": i} for i in range(3)]})
    assert_error(response, 400, "invalid", fields=["pushes"])
    assert PushLog.objects.count() == 0


# --- GET /push/<id> ------------------------------------------------------------------------

def test_get_push_status(api):
    push_id = post(api, "/api/v1/push", {"users": ["u1", "u2"], "data": 1}).json()["id"]
    response = api.get(f"/api/v1/push/{push_id}")
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["id", "status", "created_at", "published_at", "targets", "delivered",
                          "acked", "error"]
    assert body["id"] == push_id
    assert (body["status"], body["published_at"], body["targets"], body["delivered"],
            body["acked"], body["error"]) == ("accepted", None, 2, 0, 0, None)


def test_get_failed_push_shows_its_error(api):
    push_id = post(api, "/api/v1/push", {"broadcast": True, "data": 1}).json()["id"]
    PushLog.objects.filter(id=push_id).update(status=PushStatus.FAILED, error="ttl ran out")
    body = api.get(f"/api/v1/push/{push_id}").json()
    assert (body["status"], body["error"], body["targets"]) == ("failed", "ttl ran out", "all")


def test_get_unknown_or_foreign_push_is_404(api):
    assert_error(api.get("/api/v1/push/nope"), 404, "not_found")
    other, _ = client_for("other")
    foreign = post(other, "/api/v1/push", {"users": ["u"], "data": 1}).json()["id"]
    assert_error(api.get(f"/api/v1/push/{foreign}"), 404, "not_found")
    assert other.get(f"/api/v1/push/{foreign}").status_code == 200


# --- presence ------------------------------------------------------------------------------

def _remote_node(node_id: str, *, age_s: float, stopped: bool = False) -> None:
    now = timezone.now()
    NodeRow.objects.create(id=node_id, started_at=now - timedelta(hours=1),
                           last_seen=now - timedelta(seconds=age_s),
                           stopped_at=now if stopped else None)


def _record(session_id: str, node_id: str, user: str = "u1", closed: bool = False) -> None:
    now = timezone.now()
    SessionRecord.objects.create(id=session_id, user_id=user, node_id=node_id,
                                 connected_at=now - timedelta(minutes=1), last_seen=now,
                                 closed_at=now if closed else None)


def test_presence_from_this_node_and_live_nodes_only(api, node: GatewayNode):
    node.registry.register(make_session("u1", "local-1", at=1_800_000_000.0), max_per_user=5)
    node.registry.register(make_session("u2", "local-other"), max_per_user=5)
    _remote_node("live", age_s=1)
    _remote_node("dead", age_s=gateway_settings.node_timeout_s + 60)
    _remote_node("stopped", age_s=1, stopped=True)
    _remote_node(node.node_id, age_s=1)
    _record("remote-live", "live")
    _record("remote-closed", "live", closed=True)
    _record("remote-dead", "dead")
    _record("remote-stopped", "stopped")
    _record("remote-own-row", node.node_id)  # this node answers from memory, not its rows
    _record("remote-other-user", "live", user="u2")

    response = api.get("/api/v1/users/u1/presence")
    assert response.status_code == 200
    body = response.json()
    assert body["user"] == "u1"
    assert body["online"] is True
    assert [(c["session"], c["node"]) for c in body["connections"]] == [
        ("local-1", node.node_id), ("remote-live", "live")]
    local = body["connections"][0]
    assert local["connected_at"].startswith("2027-01-15T08:00:00")
    assert set(local) == {"session", "node", "connected_at", "last_seen"}


def test_presence_of_an_offline_user(api):
    _remote_node("dead", age_s=3600)
    _record("remote-dead", "dead", user="ghost")
    body = api.get("/api/v1/users/ghost/presence").json()
    assert body == {"user": "ghost", "online": False, "connections": []}


def test_presence_of_an_invalid_user_id_is_400(api):
    assert_error(api.get("/api/v1/users/bad%20id/presence"), 400, "invalid", fields=["user"])


# --- disconnect ----------------------------------------------------------------------------

def test_disconnect_queues_a_control_order(api, submitted):
    response = post(api, "/api/v1/users/u1/disconnect", {"reason": "banned"})
    assert response.status_code == 202
    body = response.json()
    assert (body["status"], body["user"]) == ("accepted", "u1")
    (order,) = submitted
    assert isinstance(order, ControlMessage)
    assert (order.id, order.action, order.users, order.session_ids, order.reason) == (
        body["id"], "disconnect", ("u1",), (), "banned")


def test_disconnect_stores_its_reason_and_client_in_the_audit_trail(api, submitted):
    response = post(api, "/api/v1/users/u1/disconnect", {"reason": "banned for spam"})
    assert response.status_code == 202
    event = AuditEvent.objects.get()
    assert (event.actor_kind, event.actor, event.action, event.user_id, event.reason,
            event.order_id) == ("api_client", "billing", "user_disconnect", "u1",
                                "banned for spam", response.json()["id"])
    post(api, "/api/v1/users/u1/disconnect", {"reason": "r" * 201})  # refused: not recorded
    assert AuditEvent.objects.count() == 1


def test_disconnect_without_a_body(api, submitted):
    response = api.post("/api/v1/users/u1/disconnect")
    assert response.status_code == 202
    assert submitted[0].reason == ""


def test_disconnect_reaches_a_running_relay(api, node: GatewayNode):
    # Without a running relay loop the order is not queued anywhere visible; with one it is.
    import asyncio
    import threading

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        node.relay._loop = loop
        assert post(api, "/api/v1/users/u9/disconnect", {}).status_code == 202
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(timeout=5)
        assert [m.users for m in node.relay.pending] == [("u9",)]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


def test_disconnect_validation(api, submitted):
    assert_error(post(api, "/api/v1/users/u1/disconnect", {"reason": "r" * 201}), 400,
                 "invalid", fields=["reason"])
    assert_error(post(api, "/api/v1/users/bad%20id/disconnect", {}), 400, "invalid",
                 fields=["user"])
    assert_error(post(api, "/api/v1/users/u1/disconnect", ["x"]), 400, "invalid")
    assert submitted == []


# --- tokens --------------------------------------------------------------------------------

def test_token_is_201_and_decodable(api):
    response = post(api, "/api/v1/tokens", {"user": "u1", "ttl": 120, "meta": {"plan": "pro"}})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    claims = decode_token(body["token"], secret=gateway_settings.jwt_secret)
    assert (claims.user_id, claims.meta) == ("u1", {"plan": "pro"})
    expires = timezone.datetime.fromisoformat(body["expires_at"])
    assert int(expires.timestamp()) == claims.expires_at
    assert 110 <= claims.expires_at - timezone.now().timestamp() <= 121


def test_token_validation(api):
    assert_error(post(api, "/api/v1/tokens", {"user": "a b"}), 400, "invalid", fields=["user"])
    assert_error(post(api, "/api/v1/tokens", {"user": "u", "ttl": 0}), 400, "invalid",
                 fields=["ttl"])


def test_token_needs_a_key():
    assert_error(post(APIClient(), "/api/v1/tokens", {"user": "u1"}), 401, "unauthorized")


# --- schema and operations -----------------------------------------------------------------

def test_openapi_schema_and_docs(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    assert {"/api/v1/push", "/api/v1/push/batch", "/api/v1/tokens"} <= set(paths)
    assert client.get("/api/docs/").status_code == 200


def test_healthz_is_503_while_the_node_does_not_run(client, node: GatewayNode):
    # (A running node, and one whose delivery loop is down: tests/unit/test_node.py.)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unhealthy", "node": node.node_id,
                               "detail": "the node is not running"}


def test_readyz_with_the_local_broker(client, node: GatewayNode):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ready", "node": node.node_id,
                               "checks": {"database": "ok", "channel_layer": "ok",
                                          "broker": "ok"}}


def test_readyz_names_the_failing_check(client, node: GatewayNode):
    node.broker.available = False
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["channel_layer"] == "ok"
    assert body["checks"]["broker"].startswith("BrokerUnavailable")


@pytest.mark.parametrize("beating", [True, False])
def test_readyz_of_a_web_node_needs_its_runconsumer_beat(client, node: GatewayNode, settings,
                                                         monkeypatch, beating):
    from gateway_node import broker_process

    asked: list[tuple[str, str]] = []

    async def consumer_beating(*, node_id: str, redis_url: str) -> bool:
        asked.append((node_id, redis_url))
        return beating

    monkeypatch.setattr(broker_process, "consumer_beating", consumer_beating)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    node.role = "web"
    response = client.get("/readyz")
    assert asked == [(node.node_id, "redis://127.0.0.1:1/0")]
    consumer = response.json()["checks"]["consumer"]
    if beating:
        assert consumer == "ok"
    else:
        assert response.status_code == 503
        assert consumer.startswith("RuntimeError: no beat from this node's runconsumer")


def test_a_failing_probe_logs_one_warning_not_an_error(client, node: GatewayNode, caplog):
    node.broker.available = False
    with caplog.at_level("INFO", logger="django.request"):
        assert client.get("/readyz").status_code == 503
    records = [r for r in caplog.records if r.name == "django.request"]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("WARNING", "Service Unavailable: /readyz")]


def test_favicon_is_no_content_and_logs_nothing(client, caplog):
    with caplog.at_level("INFO", logger="django.request"):
        response = client.get("/favicon.ico")
    assert response.status_code == 204
    assert [r for r in caplog.records if r.name == "django.request"] == []


def test_metrics_text(client, node: GatewayNode, api):
    node.registry.register(make_session("u1", "m1"), max_per_user=5)
    post(api, "/api/v1/push", {"users": ["u1"], "data": 1})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert f'gateway_connections{{app="default",node="{node.node_id}"}} 1.0' in text
    assert f'gateway_users{{app="default",node="{node.node_id}"}} 1.0' in text
    labels = f'app="default",client="billing",node="{node.node_id}",status="accepted"'
    assert f"gateway_pushes_total{{{labels}}}" in text
    assert "# TYPE gateway_push_latency_seconds histogram" in text


# --- bad input on the other POST routes (issue #10) ---------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("raw", [
    b'{"user": "u1", "meta": {"x": ' + DEEP + b"}}",
    DEEP,
    b'{"user": "u1", "meta": {"n": "\\ud800"}}',
    b'{"user": "u1", "meta": {"n": 1e999}}',
    b'{"user": "u1", "meta": {"n": ' + b"[" * 63 + b"]" * 63 + b"}}",
], ids=["deep meta", "deep body", "surrogate meta", "1e999 meta", "65 levels"])
def test_token_bad_input_is_400(api, raw):
    response = api.post("/api/v1/tokens", data=raw, content_type="application/json")
    assert response.status_code == 400, response.content[:200]
    assert response.json()["error"] in ("invalid", "bad_json")


@pytest.mark.parametrize("raw", [
    b'{"reason": ' + DEEP + b"}",
    DEEP,
    b'{"reason": "\\ud800"}',
], ids=["deep reason", "deep body", "surrogate reason"])
def test_disconnect_bad_input_is_400(api, submitted, raw):
    response = api.post("/api/v1/users/u1/disconnect", data=raw, content_type="application/json")
    assert response.status_code == 400, response.content[:200]
    assert response.json()["error"] in ("invalid", "bad_json")
    assert submitted == []


# --- failed authentication (issue #10) ------------------------------------------------------

def test_failed_authentication_is_throttled_per_address(node: GatewayNode, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(node.rate_limits.auth_failures, "timer", lambda: now[0])
    body = {"user": "u1"}

    def token(key: str, address: str):
        return APIClient(REMOTE_ADDR=address).post(
            "/api/v1/tokens", body, format="json", HTTP_AUTHORIZATION=f"Token {key}")

    with override_settings(GATEWAY_API_AUTH_FAILURES_PER_MINUTE=2):
        assert token("gw_0123abcd_" + "A" * 43, "10.0.0.9").status_code == 401
        assert token("nope", "10.0.0.9").status_code == 401
        refused = token("nope", "10.0.0.9")
        assert_error(refused, 429, "rate_limited")
        assert 1 <= int(refused["Retry-After"]) <= 30
        assert token("nope", "10.0.0.8").status_code == 401
        now[0] += 30
        assert token("nope", "10.0.0.9").status_code == 401


def test_an_impossible_key_costs_no_query(django_assert_num_queries):
    for key in ("not-a-gateway-key", "gw_short_key", "gw_0123abcd_" + "A" * 42 + "!"):
        with django_assert_num_queries(0):
            response = APIClient().post("/api/v1/tokens", {"user": "u"}, format="json",
                                        HTTP_AUTHORIZATION=f"Token {key}")
        assert_error(response, 401, "unauthorized")


# --- the schema says exactly what the server accepts (issue #10) ---------------------------

def _json_schema(schema, components):
    """OpenAPI 3.0 to JSON Schema for ``jsonschema``: refs inlined, ``nullable`` as null."""
    if isinstance(schema, list):
        return [_json_schema(s, components) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _json_schema(components[schema["$ref"].rsplit("/", 1)[1]], components)
    out = {k: _json_schema(v, components) for k, v in schema.items() if k != "nullable"}
    if isinstance(out.get("pattern"), str) and out["pattern"].endswith("$"):
        # ECMA 262's `$` (JSON Schema's) is the end of the text; Python's also matches
        # before a final newline.
        out["pattern"] = out["pattern"][:-1] + r"\Z"
    if schema.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


@pytest.fixture
def components(client) -> dict:
    schema = json.loads(client.get("/api/schema/", HTTP_ACCEPT="application/json").content)
    return schema["components"]["schemas"]


def _accepts(fn):
    def check(body) -> bool:
        try:
            fn(body)
        except RequestInvalid:
            return False
        return True
    return check


validation_push = _accepts(validation.push_request)
validation_token = _accepts(validation.token_request)
validation_disconnect = _accepts(validation.disconnect_reason)


def _batch(body) -> None:
    for item in validation.batch_items(body):
        validation.push_request(item, level=validation.BATCH_ITEM_LEVEL)


validation_batch = _accepts(_batch)
OK_PUSH = {"users": ["u1"], "data": 1}
SCHEMA_CASES = [
    # (component, validator, body)
    ("PushBody", validation_push, OK_PUSH),
    ("PushBody", validation_push, {"broadcast": True, "data": None}),
    ("PushBody", validation_push, {"broadcast": True, "users": None, "data": {"a": [1]}}),
    ("PushBody", validation_push, {"broadcast": False, "users": ["a:b@c.d-e_f"], "data": 1}),
    ("PushBody", validation_push, {**OK_PUSH, "topic": None, "ttl": None,
                                   "idempotency_key": None}),
    ("PushBody", validation_push, {**OK_PUSH, "ttl": 604800, "topic": "t" * 200}),
    ("PushBody", validation_push, {"users": None, "data": 1}),
    ("PushBody", validation_push, {"users": [], "data": 1}),
    ("PushBody", validation_push, {"users": ["bad id"], "data": 1}),
    ("PushBody", validation_push, {"users": ["u" * 129], "data": 1}),
    ("PushBody", validation_push, {"users": ["u1\n"], "data": 1}),
    ("PushBody", validation_push, {"broadcast": True, "users": ["u1"], "data": 1}),
    ("PushBody", validation_push, {"broadcast": None, "users": ["u1"], "data": 1}),
    ("PushBody", validation_push, {**OK_PUSH, "extra": 1}),
    ("PushBody", validation_push, {"users": ["u1"]}),
    ("PushBody", validation_push, {**OK_PUSH, "ttl": 0}),
    ("PushBody", validation_push, {**OK_PUSH, "ttl": True}),
    ("PushBody", validation_push, {**OK_PUSH, "ttl": 1.5}),
    ("PushBody", validation_push, {**OK_PUSH, "topic": ""}),
    ("PushBody", validation_push, {**OK_PUSH, "topic": "a\x00"}),
    ("PushBody", validation_push, {**OK_PUSH, "idempotency_key": "k" * 201}),
    ("PushBatch", validation_batch, {"pushes": [OK_PUSH]}),
    ("PushBatch", validation_batch, {"pushes": []}),
    ("PushBatch", validation_batch, {"pushes": None}),
    ("PushBatch", validation_batch, {"pushes": [OK_PUSH], "more": 1}),
    ("TokenRequest", validation_token, {"user": "u1"}),
    ("TokenRequest", validation_token, {"user": "u1", "ttl": 60, "meta": {"a": [1]}}),
    ("TokenRequest", validation_token, {"user": "u1", "meta": None}),
    ("TokenRequest", validation_token, {"user": "u1", "ttl": None}),
    ("TokenRequest", validation_token, {"user": "u1", "ttl": 0}),
    ("TokenRequest", validation_token, {"user": "a b"}),
    ("TokenRequest", validation_token, {"user": "u1", "metadata": {}}),
    ("Disconnect", validation_disconnect, {}),
    ("Disconnect", validation_disconnect, {"reason": "x" * 200}),
    ("Disconnect", validation_disconnect, {"reason": None}),
    ("Disconnect", validation_disconnect, {"reason": "x" * 201}),
    ("Disconnect", validation_disconnect, {"why": "x"}),
]


@pytest.mark.parametrize(("name", "check", "body"), SCHEMA_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(SCHEMA_CASES)])
def test_the_schema_accepts_exactly_what_the_server_accepts(components, name, check, body):
    validator = jsonschema.Draft7Validator(_json_schema(components[name], components))
    assert validator.is_valid(body) == check(body), body


def test_the_schema_names_the_key_scheme_and_every_error_status(client):
    schema = json.loads(client.get("/api/schema/", HTTP_ACCEPT="application/json").content)
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey", "in": "header", "name": "Authorization",
        "description": schema["components"]["securitySchemes"]["ApiKey"]["description"]}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            assert {"401", "403", "429", "503"} <= set(operation["responses"]), (path, method)
            assert operation["security"] == [{"ApiKey": []}]


def test_the_schema_generates_without_warnings_and_validates(tmp_path):
    # --fail-on-warn: drf-spectacular's warnings (an authenticator it cannot describe, a
    # field it cannot type) fail the command, as they would `check --deploy`.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file",
                 str(tmp_path / "schema.yaml"))
    assert "ApiKey" in (tmp_path / "schema.yaml").read_text()
