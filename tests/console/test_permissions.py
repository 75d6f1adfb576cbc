"""View-only staff see everything and change nothing: actions are hidden, and refused with
403 when posted anyway."""

from __future__ import annotations

import pytest
from django.urls import reverse

from push_app.models import ApiClient, PushLog
from push_app.services import api_client_create
from tests.support.console import make_node, make_push, make_session

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows():
    node = make_node("node-a")
    make_session("s1", "alice", node)
    client, _ = api_client_create(name="shop")
    return node, make_push(["alice"], delivered={"node-a": (1, 1)}), client


def test_viewer_sees_every_page(viewer, rows):
    _, push, client = rows
    for url in (
        reverse("admin:index"), reverse("admin:console_live"), reverse("admin:console_json"),
        reverse("admin:console_user") + "?q=alice",
        reverse("admin:sessions_app_sessionrecord_changelist"),
        reverse("admin:sessions_app_node_changelist"),
        reverse("admin:sessions_app_node_change", args=["node-a"]),
        reverse("admin:push_app_pushlog_changelist"),
        reverse("admin:push_app_pushlog_change", args=[push.id]),
        reverse("admin:push_app_apiclient_changelist"),
        reverse("admin:push_app_apiclient_change", args=[client.pk]),
    ):
        assert viewer.get(url).status_code == 200, url


def test_viewer_is_not_offered_actions(viewer, rows):
    sessions = viewer.get(reverse("admin:sessions_app_sessionrecord_changelist")).content.decode()
    assert "disconnect_sessions" not in sessions and "Disconnect a user" not in sessions
    pushes = viewer.get(reverse("admin:push_app_pushlog_changelist")).content.decode()
    assert "Send a test push" not in pushes
    clients = viewer.get(reverse("admin:push_app_apiclient_changelist")).content.decode()
    assert 'value="deactivate"' not in clients
    client = rows[2]
    detail = viewer.get(reverse("admin:push_app_apiclient_change", args=[client.pk]))
    assert "Rotate key" not in detail.content.decode()
    user = viewer.get(reverse("admin:console_user"), {"q": "alice"}).content.decode()
    assert "Disconnect all" not in user and "Send a test push" not in user


def test_viewer_gets_403_on_every_write(viewer, node, rows):
    _, _, client = rows
    sessions = reverse("admin:sessions_app_sessionrecord_changelist")
    for action in ("disconnect_sessions", "disconnect_users"):
        response = viewer.post(sessions, {"action": action, "_selected_action": ["s1"],
                                          "confirm": "yes", "reason": "x"})
        assert response.status_code == 403, action
    disconnect_user = reverse("admin:sessions_app_sessionrecord_disconnect_user")
    assert viewer.get(disconnect_user).status_code == 403
    assert viewer.post(disconnect_user, {"user": "alice"}).status_code == 403
    test_push = reverse("admin:push_app_pushlog_test_push")
    assert viewer.get(test_push).status_code == 403
    assert viewer.post(test_push, {"user": "alice", "payload": "1"}).status_code == 403
    assert viewer.post(reverse("admin:push_app_apiclient_add"), {"name": "x"}).status_code == 403
    rotate = reverse("admin:push_app_apiclient_rotate", args=[client.pk])
    assert viewer.post(rotate).status_code == 403
    deactivate = viewer.post(reverse("admin:push_app_apiclient_changelist"),
                             {"action": "deactivate", "_selected_action": [client.pk]})
    assert deactivate.status_code == 403

    assert not node.relay.pending
    assert PushLog.objects.count() == 1
    assert list(ApiClient.objects.values_list("name", "is_active")) == [("shop", True)]


def test_operator_with_custom_permissions_only(client, django_user_model, node, rows):
    """The console's custom permissions are enough for its actions, without superuser."""
    from django.contrib.auth.models import Permission

    from tests.support.console import VIEW_PERMS

    user = django_user_model.objects.create_user("op", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(
        codename__in=[*VIEW_PERMS, "disconnect_session", "send_test_push"]))
    client.force_login(user)
    response = client.post(reverse("admin:sessions_app_sessionrecord_disconnect_user"),
                           {"user": "alice", "reason": "x"})
    assert response.status_code == 302
    assert node.relay.pending[0].users == ("alice",)
    assert client.get(reverse("admin:push_app_pushlog_test_push")).status_code == 200
    # Keys stay with those who may change API clients.
    assert client.post(reverse("admin:push_app_apiclient_rotate", args=[rows[2].pk])
                       ).status_code == 403
