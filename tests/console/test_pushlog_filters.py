"""The push log list's "accepted" filter (quick windows, a custom range) and its CSV export
(``console/pushlogs.py``)."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from console.pushlogs import CSV_HEADER, CreatedFilter, csv_rows
from push_app.models import PushLog, PushStatus
from tests.support.console import make_push

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:push_app_pushlog_changelist"
EXPORT = "admin:push_app_pushlog_export"


def shown(response) -> set[str]:
    assert response.status_code == 200, response.content[:500]
    return {row.id for row in response.context["cl"].result_list}


@pytest.fixture
def aged() -> dict[str, PushLog]:
    return {label: make_push(["u1"], age=age) for label, age in (
        ("10 min", timedelta(minutes=10)), ("3 h", timedelta(hours=3)),
        ("3 d", timedelta(days=3)), ("9 d", timedelta(days=9)))}


@pytest.mark.parametrize(("window", "expected"), [
    ("1h", {"10 min"}), ("24h", {"10 min", "3 h"}), ("7d", {"10 min", "3 h", "3 d"}),
])
def test_quick_windows_count_back_from_now(operator, aged, window, expected):
    ids = shown(operator.get(reverse(CHANGELIST), {"created": window}))
    assert ids == {aged[label].id for label in expected}


def test_a_quick_window_is_counted_from_the_filters_clock(operator, aged, monkeypatch):
    # Two hours from now, "last hour" holds nothing of what is stored.
    later = timezone.now() + timedelta(hours=2)
    monkeypatch.setattr(CreatedFilter, "clock", staticmethod(lambda: later))
    assert shown(operator.get(reverse(CHANGELIST), {"created": "1h"})) == set()
    assert shown(operator.get(reverse(CHANGELIST), {"created": "24h"})) == {
        aged["10 min"].id, aged["3 h"].id}


def test_custom_range_in_the_consoles_timezone_to_exclusive(operator, aged):
    start = timezone.localtime(aged["3 d"].created_at) - timedelta(seconds=1)
    end = timezone.localtime(aged["3 h"].created_at)
    # As a datetime-local input sends it: no timezone, seconds.
    params = {"created_from": start.strftime("%Y-%m-%dT%H:%M:%S"),
              "created_to": end.strftime("%Y-%m-%dT%H:%M:%S.%f")}
    assert shown(operator.get(reverse(CHANGELIST), params)) == {aged["3 d"].id}
    only_from = {"created_from": start.date().isoformat()}
    assert aged["9 d"].id not in shown(operator.get(reverse(CHANGELIST), only_from))


def test_the_range_form_keeps_the_other_filters_and_a_bad_date_is_refused(operator, aged):
    failed = make_push(["u2"], status=PushStatus.FAILED, error="ttl ran out")
    response = operator.get(reverse(CHANGELIST), {"status__exact": "failed", "created": "1h"})
    assert shown(response) == {failed.id}
    html = response.content.decode()
    assert '<input type="hidden" name="status__exact" value="failed">' in html
    assert "Last 24 hours" in html and 'name="created_from"' in html
    bad = operator.get(reverse(CHANGELIST), {"created_from": "yesterday-ish"})
    assert bad.status_code == 302 and "e=1" in bad["Location"]
    assert operator.get(reverse(EXPORT), {"created": "2y"}).status_code == 400


def read_csv(response) -> list[list[str]]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    assert response.streaming
    text = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(text)))


def test_export_is_the_filtered_list_with_whole_ids_and_escaped_text(operator, aged):
    tricky = make_push(["=cmd", "u,2"], topic='say "hi", then\nleave',
                       error="-1+1 failed", idempotency_key="@sum(A1)",
                       age=timedelta(minutes=5))
    rows = read_csv(operator.get(reverse(EXPORT), {"created": "1h"}))
    assert rows[0] == list(CSV_HEADER)
    by_id = {r[0]: dict(zip(CSV_HEADER, r, strict=True)) for r in rows[1:]}
    assert set(by_id) == {aged["10 min"].id, tricky.id}
    row = by_id[tricky.id]
    assert len(tricky.id) > 16, "an id longer than the console shortens, exported whole"
    assert row["topic"] == 'say "hi", then\nleave'
    assert row["users"] == "'=cmd u,2"
    assert row["error"] == "'-1+1 failed" and row["idempotency_key"] == "'@sum(A1)"
    assert datetime.fromisoformat(row["created_at"]) == tricky.created_at
    assert row["published_at"] and row["client"] == "console"
    # The search applies too: the list's own filtering.
    searched = read_csv(operator.get(reverse(EXPORT), {"q": tricky.id}))
    assert [r[0] for r in searched[1:]] == [tricky.id]


def test_export_is_bounded():
    for _ in range(3):
        make_push(["u1"])
    lines = list(csv_rows(PushLog.objects.order_by("-created_at"), limit=2))
    assert len(lines) == 4  # header, two rows, the note
    assert lines[-1].startswith("# cut at 2 rows")
    assert len(list(csv_rows(PushLog.objects.all(), limit=3))) == 4  # no note when all fit


def test_the_list_links_its_export_with_its_filters(operator, aged):
    html = operator.get(reverse(CHANGELIST), {"created": "24h"}).content.decode()
    assert f'href="{reverse(EXPORT)}?created=24h"' in html


def test_export_needs_the_view_permission(viewer, db):
    assert viewer.get(reverse(EXPORT)).status_code == 200
    staff = User.objects.create_user("nobody", password="pw", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(reverse(EXPORT)).status_code == 403
