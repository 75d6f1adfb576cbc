"""Live sessions and nodes in admin: filters, search, and disconnecting (close 4010)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from gateway_core.messages import ControlMessage
from tests.support.console import make_node, make_session

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:sessions_app_sessionrecord_changelist"


@pytest.fixture
def cluster():
    a = make_node("node-a")
    b = make_node("node-b", alive=False)
    make_session("s-alice-1", "alice", a, meta={"plan": "pro"})
    make_session("s-alice-2", "alice", a, age=timedelta(hours=3))
    make_session("s-bob", "bob", a, age=timedelta(days=2))
    make_session("s-carol", "carol", b)  # open on a dead node: stale
    make_session("s-dave", "dave", a, closed=True, close_code=4008)
    return a, b


def shown(response) -> set[str]:
    assert response.status_code == 200, response.content[:500]
    return {row.id for row in response.context["cl"].result_list}


def test_live_is_the_default_and_never_shows_a_stale_session(operator, cluster):
    url = reverse(CHANGELIST)
    assert shown(operator.get(url)) == {"s-alice-1", "s-alice-2", "s-bob"}
    assert shown(operator.get(url, {"state": "stale"})) == {"s-carol"}
    assert shown(operator.get(url, {"state": "closed"})) == {"s-dave"}
    assert len(shown(operator.get(url, {"state": "all"}))) == 5


def test_filter_by_node_and_age_and_search_by_user(operator, cluster):
    url = reverse(CHANGELIST)
    assert shown(operator.get(url, {"state": "all", "node__id__exact": "node-b"})) == {"s-carol"}
    assert shown(operator.get(url, {"age": "1h"})) == {"s-alice-1"}
    assert shown(operator.get(url, {"age": "older"})) == {"s-bob"}
    assert shown(operator.get(url, {"q": "alice"})) == {"s-alice-1", "s-alice-2"}
    assert shown(operator.get(url, {"q": "ali"})) == set()  # user ids match exactly


def test_list_shows_what_an_operator_needs(operator, cluster):
    html = operator.get(reverse(CHANGELIST), {"state": "all"}).content.decode()
    for text in ("alice", "node-a", "10.0.0.7", "TestBrowser", "plan=pro", "4008 heartbeat timeout",
                 'console-badge console-live">live<', 'console-badge console-stale">stale<'):
        assert text in html, text
    assert 'value="disconnect_sessions"' in html and "Disconnect a user" in html


def test_disconnect_selected_asks_for_a_reason_then_orders_4010(operator, node, cluster):
    url = reverse(CHANGELIST) + "?state=all"  # the form posts back to the list it is on
    form = {"action": "disconnect_sessions", "_selected_action": ["s-alice-1", "s-dave"]}

    confirm = operator.post(url, form)
    assert confirm.status_code == 200
    html = confirm.content.decode()
    assert 'name="reason"' in html and 'name="confirm"' in html
    assert "1 of these 2 sessions is not live" in html
    assert not node.relay.pending

    done = operator.post(url, {**form, "confirm": "yes", "reason": "ticket 42"})
    assert done.status_code == 302
    [order] = node.relay.pending
    assert isinstance(order, ControlMessage) and order.action == "disconnect"
    assert order.session_ids == ("s-alice-1",) and order.users == ()  # closed s-dave left out
    assert order.reason == "ticket 42"
    entry = LogEntry.objects.get(object_id="s-alice-1")
    assert "ticket 42" in entry.change_message and order.id in entry.change_message


def test_disconnect_users_of_selected_sessions(operator, node, cluster):
    response = operator.post(reverse(CHANGELIST), {
        "action": "disconnect_users", "_selected_action": ["s-alice-2", "s-bob"],
        "confirm": "yes", "reason": "",
    })
    assert response.status_code == 302
    assert sorted(m.users for m in node.relay.pending) == [("alice",), ("bob",)]


def test_disconnect_a_user_by_id(operator, node, cluster):
    url = reverse("admin:sessions_app_sessionrecord_disconnect_user")
    page = operator.get(url, {"user": "alice"})
    assert page.status_code == 200 and "s-alice-1" in page.content.decode()

    assert operator.post(url, {"user": "not a user!", "reason": ""}).status_code == 200
    assert not node.relay.pending

    response = operator.post(url, {"user": "alice", "reason": "abuse"})
    assert response.status_code == 302 and "q=alice" in response["Location"]
    [order] = node.relay.pending
    assert order.users == ("alice",) and order.reason == "abuse"


def test_node_list_and_detail_show_health_and_link_sessions(operator, cluster):
    listing = operator.get(reverse("admin:sessions_app_node_changelist")).content.decode()
    assert 'console-badge console-alive">alive<' in listing
    assert 'console-badge console-dead">dead<' in listing
    detail = operator.get(reverse("admin:sessions_app_node_change", args=["node-b"]))
    html = detail.content.decode()
    assert detail.status_code == 200 and ">dead<" in html
    assert "node__id__exact=node-b" in html
    assert 'name="_save"' not in html  # read-only


def test_sessions_and_nodes_are_read_only(operator, cluster):
    assert operator.get(reverse("admin:sessions_app_sessionrecord_add")).status_code == 403
    assert operator.post(reverse("admin:sessions_app_node_delete", args=["node-a"])
                         ).status_code == 403
