"""One time format on every console page (seconds and timezone); the chart ends at now."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from console.admin_site import chart
from push_app.models import PushStatus
from push_app.selectors import MinuteBucket
from tests.support.console import make_node, make_push, make_session

pytestmark = pytest.mark.django_db

STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")


def test_every_page_writes_times_with_seconds_and_timezone(operator):
    node = make_node("node-a")
    make_session("s1", "alice", node, age=timedelta(minutes=3), closed=True, close_code=4010)
    log = make_push(["alice"], status=PushStatus.FAILED, error="boom",
                    delivered={"node-a": (1, 0)})
    for url in (reverse("admin:index"), reverse("admin:console_user") + "?q=alice",
                reverse("admin:sessions_app_sessionrecord_changelist") + "?state=all",
                reverse("admin:push_app_pushlog_changelist"),
                reverse("admin:push_app_pushlog_change", args=[log.id])):
        html = operator.get(url).content.decode()
        assert STAMP.search(html), url
        assert "a.m." not in html and "p.m." not in html, url  # Django's default format


def test_the_charts_last_label_is_the_current_minute():
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    series = [MinuteBucket(start=start + timedelta(minutes=i)) for i in range(60)]
    labels = chart(series)["labels"]
    assert [label["text"] for label in labels] == ["12:14", "12:29", "12:44", "12:59"]
    assert labels[-1]["anchor"] == "end"
