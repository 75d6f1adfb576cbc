"""The dashboard: what it shows, and that its polled parts cost a fixed number of queries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from push_app.models import PushStatus
from push_app.rejections import RejectionCounter
from push_app.services import api_client_create
from tests.support.console import make_node, make_push, make_session

pytestmark = pytest.mark.django_db


def test_dashboard_is_the_admin_index(operator):
    alive = make_node("node-a", connections=2, users=2)
    dead = make_node("node-b", alive=False, connections=9, users=9)
    make_session("s1", "alice", alive)
    make_session("s2", "bob", alive)
    make_session("s3", "carol", dead)  # open, but its node stopped beating: not live
    make_push(["alice"], delivered={"node-a": (1, 1)})
    make_push(["bob"], status=PushStatus.FAILED, error="ttl ran out before the broker accepted")

    page = operator.get(reverse("admin:index"))

    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="console-live"' in html and reverse("admin:console_live") in html
    assert "console/console.js" in html
    assert "node-a" in html and "node-b" in html
    assert 'console-badge console-dead">dead<' in html
    assert "<svg" in html and "Recent failures" in html and "ttl ran out" in html
    data = page.context["dash"]
    assert (data.nodes_alive, len(data.nodes)) == (1, 2)
    assert (data.connections, data.users) == (2, 2)  # carol's stale session is not counted
    assert data.hour == {"pushes": 2, "delivered": 1, "acked": 1, "failed": 1}


def test_live_fragment_and_json_answer_the_poll(operator):
    make_node("node-a", connections=1, users=1)
    make_session("s1", "alice", make_node("node-c"))
    make_push(["alice"], delivered={"node-a": (1, 0)})

    fragment = operator.get(reverse("admin:console_live"))
    assert fragment.status_code == 200
    assert "no-store" in fragment["Cache-Control"]
    body = fragment.content.decode()
    assert "<html" not in body and "node-a" in body and "Updated" in body

    data = operator.get(reverse("admin:console_json")).json()
    assert data["totals"]["nodes_alive"] == 2
    assert data["totals"]["connections"] == 1 and data["totals"]["users"] == 1
    assert data["totals"]["last_hour"]["pushes"] == 1
    assert len(data["series"]) == 60 and sum(b["pushes"] for b in data["series"]) == 1
    node_a = next(n for n in data["nodes"] if n["id"] == "node-a")
    assert node_a["state"] == "alive" and node_a["delivered_per_min"] == 0.2


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


@pytest.mark.parametrize("url_name", ["admin:console_live", "admin:console_json",
                                      "admin:index"])
def test_dashboard_queries_do_not_grow_with_rows(operator, url_name):
    url = reverse(url_name)
    first = make_node("n0")
    make_session("s0", "u0", first)
    make_push(["u0"], delivered={"n0": (1, 1)})
    counter = RejectionCounter(node_id="n0")
    counter.count(client_id=None, status=401, code="unauthorized", detail="who?")
    counter.write(counter.take())
    small = _queries(operator, url)

    for i in range(1, 8):
        node = make_node(f"n{i}", alive=i % 3 != 0)
        for j in range(5):
            make_session(f"s{i}-{j}", f"u{j}", node, closed=j == 4, close_code=1000)
    for i in range(30):
        make_push([f"u{i % 5}"], age=timedelta(minutes=i),
                  status=PushStatus.FAILED if i % 7 == 0 else PushStatus.DELIVERED,
                  delivered={f"n{i % 8}": (1, 1)})
    for i in range(6):
        client, _ = api_client_create(name=f"client-{i}")
        for status in (400, 401, 413, 429):
            counter.count(client_id=client.pk, status=status, code="x", detail="y")
    counter.count(client_id=None, status=401, code="unauthorized", detail="who?")
    counter.write(counter.take())
    large = _queries(operator, url)

    assert large == small
    # The request's session and user, then the dashboard's ten aggregate queries.
    assert large <= 12, large


def test_rejected_requests_show_per_client_with_the_last_error(operator):
    api_client_create(name="quiet")
    billing, _ = api_client_create(name="billing")
    counter = RejectionCounter(node_id="node-a")
    counter.count(client_id=billing.pk, status=429, code="rate_limited", detail="slow")
    counter.count(client_id=billing.pk, status=400, code="invalid",
                  detail="users: not a user id")
    counter.count(client_id=None, status=401, code="unauthorized", detail="unknown key")
    counter.write(counter.take())

    html = operator.get(reverse("admin:console_live")).content.decode()
    assert "Rejected requests, last hour" in html
    card = html.split("Rejected requests, last hour")[0].rsplit("<div", 1)[1]
    assert "console-card-bad" in card
    section = html.split('id="console-rejections"')[1]
    assert reverse("admin:push_app_apiclient_change", args=[billing.pk]) in section
    assert "400 invalid: users: not a user id" in section
    assert "unauthenticated" in section and "quiet" not in section
    data = operator.get(reverse("admin:console_json")).json()
    assert [(r["client"], r["total"]) for r in data["rejected_last_hour"]] == [
        ("billing", 2), ("unauthenticated", 1)]
    assert data["rejected_last_hour"][0]["by_status"]["429"] == 1


def test_no_rejections_is_not_highlighted(operator):
    html = operator.get(reverse("admin:console_live")).content.decode()
    assert "No API request was rejected in the last hour." in html
    assert '<span class="console-card-label">Rejected requests, last hour</span>' in html
    card = html.split("Rejected requests, last hour")[0].rsplit("<div", 1)[1]
    assert "console-card-bad" not in card


def test_dashboard_needs_view_permissions(client, django_user_model, node):
    staff = django_user_model.objects.create_user("plain", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(reverse("admin:index")).status_code == 200
    assert "console-live" not in client.get(reverse("admin:index")).content.decode()
    assert client.get(reverse("admin:console_live")).status_code == 403
    assert client.get(reverse("admin:console_json")).status_code == 403


def test_anonymous_poll_goes_to_login(client, db):
    response = client.get(reverse("admin:console_live"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
