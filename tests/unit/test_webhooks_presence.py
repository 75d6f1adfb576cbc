"""``user.online`` / ``user.offline`` from the sessions table (PROTOCOL.md section 7):
once per real transition however many nodes scan, debounced, per app. Times are given to
each scan; nothing sleeps."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from push_app.services import api_client_create
from push_app.tenancy import app_create
from sessions_app.models import Node, SessionRecord
from webhooks import services
from webhooks.models import Event
from webhooks.presence import presence_scan

pytestmark = [pytest.mark.django_db]

T0 = 1_800_000_000.0
DEBOUNCE = 5


def at(s: float) -> datetime:
    return datetime.fromtimestamp(T0 + s, tz=UTC)


@pytest.fixture(autouse=True)
def world():
    for node in ("n1", "n2"):
        Node.objects.create(id=node, started_at=at(-100), last_seen=at(0))
    client = api_client_create(name="shop")[0]
    with override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True):
        services.endpoint_create(client=client, req=services.EndpointRequest(
            url="http://127.0.0.1:9/h", events=("user.online", "user.offline")))


def open_session(sid: str, user: str, *, node: str = "n1", s: float = 0, app="default"):
    SessionRecord.objects.create(id=sid, app=app, user_id=user, node_id=node,
                                 connected_at=at(s), last_seen=at(s))


def close_session(sid: str, *, s: float):
    SessionRecord.objects.filter(id=sid).update(closed_at=at(s))


def scan(s: float) -> list[tuple[str, str]]:
    Node.objects.update(last_seen=at(s))  # both nodes keep beating
    return [(t.type, t.user_id)
            for t in presence_scan(now=T0 + s, debounce_s=DEBOUNCE, node_timeout_s=30)]


def sent() -> list[tuple[str, dict]]:
    return [(e.type, json.loads(e.body)["data"]) for e in Event.objects.order_by("id")]


def test_sessions_on_two_nodes_make_one_online_and_one_offline():
    open_session("a", "u1", node="n1", s=0)
    open_session("b", "u1", node="n2", s=0.2)
    # Both nodes scan; the second finds the transition claimed.
    assert scan(1) == [("user.online", "u1")]
    assert scan(1) == []
    close_session("a", s=2)
    assert scan(3) == []  # one session left
    close_session("b", s=4)
    assert scan(5) == []  # absent from now: the debounce starts
    assert scan(9) == []
    assert scan(10) == [("user.offline", "u1")]
    assert scan(10) == [] and scan(20) == []
    assert sent() == [("user.online", {"user": "u1", "at": int((T0) * 1000), "sessions": 2}),
                      ("user.offline", {"user": "u1", "at": int((T0 + 5) * 1000),
                                        "sessions": 0})]


def test_a_reconnect_within_the_debounce_sends_neither():
    open_session("a", "u1", s=0)
    assert scan(1) == [("user.online", "u1")]
    close_session("a", s=2)
    assert scan(3) == []
    open_session("b", "u1", s=4)
    assert scan(5) == []
    assert scan(30) == []
    assert [t for t, _ in sent()] == ["user.online"]


def test_a_dead_nodes_sessions_count_as_gone():
    open_session("a", "u1", node="n2", s=0)
    assert scan(1) == [("user.online", "u1")]
    Node.objects.filter(id="n1").update(last_seen=at(40))
    found = [(t.type, t.user_id) for t in presence_scan(
        now=T0 + 40, debounce_s=DEBOUNCE, node_timeout_s=30)]
    assert found == []
    found = [(t.type, t.user_id) for t in presence_scan(
        now=T0 + 46, debounce_s=DEBOUNCE, node_timeout_s=30)]
    assert found == [("user.offline", "u1")]


def test_online_again_after_offline():
    open_session("a", "u1", s=0)
    scan(1)
    close_session("a", s=2)
    scan(3)
    scan(9)
    open_session("b", "u1", s=20)
    assert scan(21) == [("user.online", "u1")]
    assert [t for t, _ in sent()] == ["user.online", "user.offline", "user.online"]


def test_only_apps_with_a_presence_endpoint_are_scanned_and_events_stay_in_their_app():
    app_create(app_id="bank")
    open_session("a", "u1", app="bank")
    assert scan(1) == []
    bank = api_client_create(name="bank-backend", app="bank")[0]
    with override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True):
        services.endpoint_create(client=bank, req=services.EndpointRequest(
            url="http://127.0.0.1:9/b", events=("user.online",)))
    assert scan(2) == [("user.online", "u1")]
    (event,) = Event.objects.all()
    assert event.app == "bank"
    assert [d.endpoint.client.name for d in event.deliveries.all()] == ["bank-backend"]
    assert timedelta(0) <= event.created_at - at(2) < timedelta(seconds=1)


def test_a_session_that_came_and_went_between_two_scans_is_both_transitions():
    open_session("a", "u1", s=0.5)
    close_session("a", s=0.8)
    assert scan(1) == [("user.online", "u1")]
    assert scan(1) == []
    assert scan(6) == [("user.offline", "u1")]
    assert scan(7) == [] and scan(20) == []
    open_session("b", "u1", s=21)
    close_session("b", s=21.5)
    assert scan(22) == [("user.online", "u1")]
    assert [(t, d["sessions"]) for t, d in sent()] == [
        ("user.online", 0), ("user.offline", 0), ("user.online", 0)]
