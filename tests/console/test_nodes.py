"""The connections chart (from the sessions' recorded open and close times) and a node's
page: health, times, counts, live sessions and users, latest closed sessions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from console.admin_site import connections_chart
from sessions_app.models import Node, SessionRecord
from sessions_app.selectors import connection_series
from tests.support.console import make_node, make_session

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 30, 12, 30, 20, tzinfo=UTC)


def session(sid: str, node: Node, *, opened: int, closed: int | None = None) -> None:
    """A session opened ``opened`` minutes before NOW, closed ``closed`` minutes before."""
    SessionRecord.objects.create(
        id=sid, user_id=f"user-{sid}", node=node,
        connected_at=NOW - timedelta(minutes=opened), last_seen=NOW,
        closed_at=None if closed is None else NOW - timedelta(minutes=closed),
        close_code=None if closed is None else 1000)


def by_time(series) -> dict[str, int]:
    return {f"{p.at:%H:%M:%S}": p.connections for p in series}


def test_connections_over_time_from_session_open_and_close_times():
    a = make_node("a", now=NOW)
    b = make_node("b", now=NOW)
    session("s1", a, opened=90)               # all hour
    session("s2", a, opened=30)               # the last half hour
    session("s3", b, opened=50, closed=20)    # 50 to 20 minutes ago
    session("s4", b, opened=120, closed=70)   # before the window
    with CaptureQueriesContext(connection) as captured:
        series = connection_series(now=NOW, minutes=60, timeout_s=30)
    assert len(captured) == 1
    assert len(series) == 60 and series[-1].at == NOW
    at = by_time(series)
    assert series[0].at == datetime(2026, 11, 30, 11, 32, tzinfo=UTC)  # end of 11:31
    # s1 from 11:00:20; s3 11:40:20-12:10:20; s2 from 12:00:20.
    assert (at["11:32:00"], at["11:41:00"], at["12:00:00"], at["12:01:00"]) == (1, 2, 2, 3)
    assert (at["12:10:00"], at["12:11:00"], at["12:30:00"], at["12:30:20"]) == (3, 2, 2, 2)
    only_b = connection_series(now=NOW, minutes=60, node_id="b", timeout_s=30)
    assert max(p.connections for p in only_b) == 1 and only_b[-1].connections == 0


def test_a_dead_nodes_sessions_stop_counting_when_it_stopped_beating():
    dead = Node.objects.create(id="dead", address="", broker="local",
                               started_at=NOW - timedelta(hours=2),
                               last_seen=NOW - timedelta(minutes=20))
    session("s1", dead, opened=45)  # never recorded closed
    series = connection_series(now=NOW, minutes=60, timeout_s=30)
    at = by_time(series)
    # Opened 11:45:20; its node beat last at 12:10:20 and was dead 30 s later.
    assert (at["11:45:00"], at["11:46:00"], at["12:10:00"]) == (0, 1, 1)
    assert (at["12:11:00"], at["12:30:20"]) == (0, 0)


def test_connections_chart_scales_and_labels_now_last():
    make_node("a", now=NOW)
    session("s1", Node.objects.get(id="a"), opened=10)
    drawn = connections_chart(connection_series(now=NOW, minutes=60, timeout_s=30))
    assert drawn["top"] == 5 and drawn["now"] == 1
    assert drawn["labels"][-1]["text"] == "12:30" and drawn["labels"][-1]["anchor"] == "end"
    assert len(drawn["line"].split()) == 60


def test_dashboard_shows_the_connections_chart(operator):
    node = make_node("n1")
    make_session("s1", "alice", node, age=timedelta(minutes=3))
    html = operator.get(reverse("admin:console_live")).content.decode()
    assert "Connections, last hour" in html and "(now: 1)" in html
    data = operator.get(reverse("admin:console_json")).json()
    assert len(data["connections_series"]) == 60
    assert data["connections_series"][-1]["connections"] == 1


def test_node_page_shows_health_counts_sessions_and_users(operator):
    node = make_node("node-a", connections=3, users=2)
    make_session("s1", "alice", node, age=timedelta(minutes=9))
    make_session("s2", "alice", node, age=timedelta(minutes=5))
    make_session("s3", "bob", node, age=timedelta(minutes=2))
    make_session("s4", "carol", node, closed=True, close_code=4010)
    make_session("s5", "dave", make_node("node-b"))
    response = operator.get(reverse("admin:console_node", args=["node-a"]))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'console-badge console-alive">alive' in html
    assert response.context["live_count"] == 3 and response.context["user_count"] == 2
    assert [s.id for s in response.context["live"]] == ["s1", "s2", "s3"]
    assert response.context["users"] == [("alice", 2), ("bob", 1)]
    assert [s.id for s, _ in response.context["closed"]] == ["s4"]
    assert "4010" in html and "dave" not in html
    assert "Connections, last hour" in html and node.address in html


def test_node_page_of_a_dead_node_and_an_unknown_one(operator):
    make_node("gone", alive=False, connections=7)
    response = operator.get(reverse("admin:console_node", args=["gone"]))
    assert response.context["state"] == "dead" and response.context["live_count"] == 0
    assert operator.get(reverse("admin:console_node", args=["nope"])).status_code == 404


def test_node_page_queries_do_not_grow_with_sessions(operator):
    node = make_node("n1")
    make_session("s0", "u0", node)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert operator.get(reverse("admin:console_node", args=["n1"])).status_code == 200
        return len(captured)

    small = queries()
    for i in range(1, 30):
        make_session(f"s{i}", f"u{i % 7}", node, closed=i % 5 == 0, close_code=1000)
    assert queries() == small


def test_node_page_is_linked_from_the_dashboard_nodes_list_and_push_page(operator):
    make_node("node-a")
    url = reverse("admin:console_node", args=["node-a"])
    assert f'href="{url}"' in operator.get(reverse("admin:console_live")).content.decode()
    listed = operator.get(reverse("admin:sessions_app_node_changelist")).content.decode()
    assert f'href="{url}"' in listed


def test_node_page_needs_view_permissions(viewer, client, db):
    make_node("node-a")
    url = reverse("admin:console_node", args=["node-a"])
    assert viewer.get(url).status_code == 200
    assert client.get(url).status_code == 302  # not signed in: to the login page


def test_node_page_and_list_show_routing(operator):
    node = make_node("node-r")
    node.routing = {"mode": "routed", "read": 120, "not_held": 1,
                    "routed": {"node-r": 40, "node-s": 80}, "routed_count": 0, "unheld": 5,
                    "broadcast": 2, "fallback": 0, "map_connections": 6000, "lookups": 9,
                    "lookup_ms": 0.42}
    node.save()
    make_node("node-plain")
    html = operator.get(reverse("admin:console_node", args=["node-r"])).content.decode()
    assert "<h2 class=\"console-h\">Routing</h2>" in html
    assert "120 since start, of which not held here: 1" in html
    assert "node-s 80" in html and "6000 connection(s)" in html and "0.42 ms" in html
    plain = operator.get(reverse("admin:console_node", args=["node-plain"])).content.decode()
    assert "console-node-routing" not in plain
    listing = operator.get(reverse("admin:sessions_app_node_changelist")).content.decode()
    assert "routed: read 120, not held 1; map 6000" in listing
    assert "broadcast (no REDIS_URL)" in listing
