"""The console's search: what an operator pastes is recognised and opened, never invented."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse

from console.ids import short_id
from push_app.models import PushLog
from tests.support.console import make_node, make_push, make_session

pytestmark = pytest.mark.django_db

SEARCH = "admin:console_user"


def find(client, q: str):
    return client.get(reverse(SEARCH), {"q": q})


def test_whole_push_id_and_session_id_open_their_pages(operator):
    node = make_node("node-a")
    make_session("5f2c9e1d0a4b4c8e9f7a6b5c4d3e2f10", "alice", node)
    log = make_push(["alice"])
    assert find(operator, log.id)["Location"] == reverse(
        "admin:push_app_pushlog_change", args=[log.id])
    assert find(operator, "5f2c9e1d0a4b4c8e9f7a6b5c4d3e2f10")["Location"] == reverse(
        "admin:sessions_app_sessionrecord_change", args=["5f2c9e1d0a4b4c8e9f7a6b5c4d3e2f10"])


def test_a_unique_prefix_shortened_id_or_idempotency_key_opens_the_push(operator):
    log = make_push(["alice"], idempotency_key="order-42")
    change = reverse("admin:push_app_pushlog_change", args=[log.id])
    for q in (log.id[:20], short_id(log.id), "order-42"):
        response = find(operator, q)
        assert response.status_code == 302, q
        assert response["Location"] == change, q


def test_a_shared_prefix_lists_the_pushes_and_offers_no_user_actions(operator):
    a = make_push(["alice"], age=timedelta(seconds=1))
    b = make_push(["bob"])
    prefix = a.id[:6]
    assert b.id.startswith(prefix)  # the shared timestamp
    response = find(operator, prefix)
    html = response.content.decode()
    assert response.status_code == 200
    assert {log.id for log in response.context["matches"]} == {a.id, b.id}
    assert short_id(a.id) in html and short_id(b.id) in html
    assert "Disconnect all" not in html and "Send a test push" not in html
    assert "Not found" not in html


def test_only_known_users_get_a_user_page(operator):
    node = make_node("node-a")
    make_session("s1", "Alice", node)
    make_push(["carol"])
    alice = find(operator, "Alice").content.decode()
    assert "Alice is online" in alice and "Disconnect all of Alice" in alice
    carol = find(operator, "carol").content.decode()  # pushed to, never connected
    assert "carol has no recorded session" in carol
    lower = find(operator, "alice").content.decode()  # user ids are case-sensitive
    assert "Not found" in lower and "Disconnect all" not in lower


def test_search_query_count_is_bounded(operator, django_assert_max_num_queries):
    node = make_node("node-a")
    make_session("s1", "alice", node)
    for _ in range(30):
        make_push(["alice"])
    assert PushLog.objects.count() == 30
    with django_assert_max_num_queries(20):
        assert find(operator, "alice").status_code == 200
    with django_assert_max_num_queries(20):
        assert find(operator, "0").status_code == 200
