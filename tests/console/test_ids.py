"""Ids shown with start and end, whole in a title, with a copy button, never re-cased."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse

from console.ids import id_html, short_id
from tests.support.console import make_node, make_push, make_session

pytestmark = pytest.mark.django_db


def test_short_id_keeps_start_and_end():
    assert short_id("01a22d3c4b5e6f708192a3b4cf871569") == "01a22d…f871569"
    assert short_id("Alice") == "Alice"
    html = id_html("01a22d3c4b5e6f708192a3b4cf871569", url="/x")
    assert 'title="01a22d3c4b5e6f708192a3b4cf871569"' in html
    assert 'data-copy-text="01a22d3c4b5e6f708192a3b4cf871569"' in html
    assert ">01a22d…f871569</a>" in html


def test_pushes_of_one_millisecond_look_different(operator):
    a = make_push(["alice"])
    b = make_push(["alice"])
    for url in (reverse("admin:push_app_pushlog_changelist"),
                reverse("admin:console_user") + "?q=alice"):
        html = operator.get(url).content.decode()
        for log in (a, b):
            assert short_id(log.id) in html, url
            assert f'data-copy-text="{log.id}"' in html, url


def test_session_ids_and_failures_show_whole_in_title(operator):
    node = make_node("node-a")
    make_session("5f2c9e1d0a4b4c8e9f7a6b5c4d3e2f10", "alice", node, age=timedelta(minutes=1))
    failed = make_push(["alice"], status="failed", error="boom")
    user = operator.get(reverse("admin:console_user"), {"q": "alice"}).content.decode()
    assert 'title="5f2c9e1d0a4b4c8e9f7a6b5c4d3e2f10"' in user and "5f2c9e…d3e2f10" in user
    live = operator.get(reverse("admin:console_live")).content.decode()
    assert f'data-copy-text="{failed.id}"' in live


def test_ids_are_never_upper_cased():
    path = finders.find("console/console.css")
    assert isinstance(path, str)
    css = Path(path).read_text(encoding="utf-8")
    assert (".console-id, .console-tools a, .object-tools a, .console-copy "
            "{ text-transform: none; }") in css
