"""The audit trail in the console: actions on a user, the pending disconnect, the feed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from push_app.models import ApiClient, AuditAction, AuditActor, AuditEvent
from push_app.services import api_client_create, audit_record
from sessions_app.models import SessionRecord
from tests.support.console import make_node, make_session

pytestmark = pytest.mark.django_db

USER_PAGE = "admin:console_user"
FEED = "admin:push_app_auditevent_changelist"


@pytest.fixture
def alice():
    node = make_node("node-a")
    make_session("s-alice-1", "alice", node, age=timedelta(minutes=5))
    make_session("s-alice-2", "alice", node, age=timedelta(minutes=3))
    return node


def user_page(client, user_id: str = "alice") -> str:
    response = client.get(reverse(USER_PAGE), {"q": user_id})
    assert response.status_code == 200
    return response.content.decode()


def feed(client, **params: str) -> str:
    response = client.get(reverse(FEED), params)
    assert response.status_code == 200
    return response.content.decode()


def test_an_operator_disconnect_is_pending_on_the_user_page_and_in_the_feed(operator, alice):
    assert "alice is online" in user_page(operator)
    done = operator.post(reverse("admin:sessions_app_sessionrecord_disconnect_user"),
                         {"user": "alice", "reason": "ticket 42"})
    assert done.status_code == 302

    event = AuditEvent.objects.get()
    assert (event.actor_kind, event.actor, event.action, event.user_id, event.reason) == (
        "operator", "admin", "user_disconnect", "alice", "ticket 42")
    html = user_page(operator)
    assert "Disconnect ordered at" in html and "by admin (ticket 42)" in html
    assert "2 connections not yet recorded closed" in html
    assert "alice is online" not in html
    assert "Actions on alice" in html and "disconnect user" in html
    listing = feed(operator)
    assert "alice" in listing and "admin" in listing and "ticket 42" in listing

    # Once the nodes record the sessions closed, the page says offline.
    SessionRecord.objects.update(closed_at=timezone.now(), close_code=4010)
    html = user_page(operator)
    assert "Disconnect ordered" not in html and "alice is offline" in html
    assert "ticket 42" in html  # still among the actions


def test_an_api_disconnect_shows_its_client_and_reason(operator, alice):
    _, key = api_client_create(name="billing")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    response = api.post("/api/v1/users/alice/disconnect", {"reason": "unpaid"}, format="json")
    assert response.status_code == 202

    html = user_page(operator)
    assert "by billing (API client) (unpaid)" in html
    assert "alice is online" not in html
    listing = feed(operator, actor_kind__exact="api_client")
    assert "billing" in listing and "unpaid" in listing and "alice" in listing


def test_a_session_disconnect_is_pending_for_that_session_only(operator, alice):
    url = reverse("admin:sessions_app_sessionrecord_changelist") + "?state=all"
    form = {"action": "disconnect_sessions", "_selected_action": ["s-alice-1"],
            "confirm": "yes", "reason": "stuck tab"}
    assert operator.post(url, form).status_code == 302
    event = AuditEvent.objects.get()
    assert (event.action, event.target, event.reason) == (
        "sessions_disconnect", "s-alice-1", "stuck tab")
    html = user_page(operator)
    assert "by admin (stuck tab)" in html
    assert "1 connection not yet recorded closed" in html
    assert "1 other connection stays open" in html


def test_a_connection_after_the_order_or_an_old_order_is_not_pending(operator, alice):
    audit_record(actor_kind=AuditActor.OPERATOR, actor="admin",
                 action=AuditAction.USER_DISCONNECT, user_id="alice", reason="old",
                 now=timezone.now() - timedelta(minutes=30))
    assert "alice is online" in user_page(operator)  # too old to be pending
    audit_record(actor_kind=AuditActor.OPERATOR, actor="admin",
                 action=AuditAction.USER_DISCONNECT, user_id="alice", reason="new",
                 now=timezone.now() - timedelta(minutes=10))
    # Both sessions were connected after that order: not what it closed.
    SessionRecord.objects.update(connected_at=timezone.now())
    html = user_page(operator)
    assert "alice is online" in html and "Disconnect ordered" not in html


def test_test_pushes_and_key_actions_are_audited(operator, alice):
    assert operator.post(reverse("admin:push_app_pushlog_test_push"),
                         {"user": "alice", "payload": '{"hello": 1}'}).status_code == 302
    assert operator.post(reverse("admin:push_app_apiclient_add"),
                         {"name": "crm", "app": "default",
                          "scope_choices": ["push"]}).status_code == 200
    crm = ApiClient.objects.get(name="crm")
    assert operator.post(reverse("admin:push_app_apiclient_rotate",
                                 args=[crm.pk])).status_code == 200
    assert operator.post(reverse("admin:push_app_apiclient_changelist"),
                         {"action": "deactivate", "_selected_action": [crm.pk]}
                         ).status_code == 302
    assert list(AuditEvent.objects.order_by("at", "id").values_list(
        "action", "actor", "user_id", "target")) == [
        ("test_push", "admin", "alice", AuditEvent.objects.get(action="test_push").target),
        ("key_create", "admin", "", "crm"),
        ("key_rotate", "admin", "", "crm"),
        ("key_deactivate", "admin", "", "crm"),
    ]
    assert "test push" in user_page(operator)
    rotated = operator.get(reverse(FEED), {"action__exact": "key_rotate"}).context["cl"]
    assert [e.action for e in rotated.result_list] == ["key_rotate"]


def test_the_feed_filters_by_actor_and_pages(operator):
    for i in range(60):
        audit_record(actor_kind=AuditActor.OPERATOR, actor="ops" if i % 2 else "admin",
                     action=AuditAction.USER_DISCONNECT, user_id=f"u{i}", reason=f"r{i}")
    response = operator.get(reverse(FEED), {"actor": "ops"})
    assert response.status_code == 200
    cl = response.context["cl"]
    assert {e.actor for e in cl.result_list} == {"ops"} and cl.result_count == 30
    first = operator.get(reverse(FEED)).context["cl"]
    assert len(first.result_list) == 50 and first.result_list[0].user_id == "u59"  # newest


def _queries(client, url: str, params: dict[str, str]) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url, params).status_code == 200
    return len(captured)


def test_user_page_and_feed_queries_are_bounded(operator, alice):
    def add(n: int) -> None:
        for i in range(n):
            audit_record(actor_kind=AuditActor.API_CLIENT, actor=f"c{i}",
                         action=AuditAction.USER_DISCONNECT, user_id="alice", reason="x")

    add(1)
    page_few = _queries(operator, reverse(USER_PAGE), {"q": "alice"})
    feed_few = _queries(operator, reverse(FEED), {})
    add(40)
    assert _queries(operator, reverse(USER_PAGE), {"q": "alice"}) == page_few
    assert _queries(operator, reverse(FEED), {}) == feed_few


def test_the_dashboard_links_the_feed_and_viewers_see_it(viewer, alice):
    audit_record(actor_kind=AuditActor.OPERATOR, actor="admin",
                 action=AuditAction.USER_DISCONNECT, user_id="alice", reason="seen")
    assert reverse(FEED) in viewer.get(reverse("admin:index")).content.decode()
    assert "seen" in feed(viewer) and "Actions on alice" in user_page(viewer)
