"""Links from the console to Grafana (only when ``GATEWAY_GRAFANA_URL`` is set), ``/metrics``
and the API docs: in the header of every page and on the dashboard."""

from __future__ import annotations

import re

import pytest
from django.test import override_settings
from django.urls import reverse

pytestmark = pytest.mark.django_db

GRAFANA = "https://grafana.example.com/d/gateway?orgId=1&refresh=10s"


def header_links(html: str) -> list[str]:
    nav = re.search(r'<nav class="console-ops".*?</nav>', html, re.S)
    assert nav is not None, "no monitoring links in the header"
    return re.findall(r'<a href="([^"]+)"', nav.group(0))


@pytest.mark.parametrize("page", ["admin:index", "admin:push_app_pushlog_changelist",
                                  "admin:sessions_app_node_changelist"])
def test_header_links_metrics_and_api_docs_and_no_grafana_unless_set(operator, page):
    html = operator.get(reverse(page)).content.decode()
    assert header_links(html) == ["/metrics", "/api/docs/"]
    assert "Grafana" not in html


def test_grafana_is_linked_in_the_header_and_on_the_dashboard_when_set(operator):
    escaped = GRAFANA.replace("&", "&amp;")
    with override_settings(GATEWAY_GRAFANA_URL=GRAFANA):
        html = operator.get(reverse("admin:index")).content.decode()
        other = operator.get(reverse("admin:push_app_pushlog_changelist")).content.decode()
    assert header_links(html) == [escaped, "/metrics", "/api/docs/"]
    assert header_links(other)[0] == escaped
    assert f'class="console-ops-link" href="{escaped}"' in html  # the dashboard's own row
    assert 'class="console-ops-link" href="/metrics"' in html


def test_the_api_docs_link_is_the_api_docs_page(client):
    # (/metrics is served by the node before Django: tests/e2e reads it there.)
    assert client.get("/api/docs/").status_code == 200
