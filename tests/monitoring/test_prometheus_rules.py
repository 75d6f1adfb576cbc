"""The shipped Prometheus rules and Grafana dashboard: valid, tested by promtool, and
about metrics the gateway really exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from gateway_core import metrics
from tests.support.gateway import REPO

RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "tests" / "monitoring" / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "gateway.json"
_METRIC = re.compile(r"\b(gateway_[a-z_]+)")


def promtool() -> str:
    path = shutil.which("promtool")
    if path:
        return path
    message = "promtool is not installed (Debian's `prometheus`; scripts/services.sh install)"
    if os.environ.get("GATEWAY_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def exported_names() -> set[str]:
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    # Histograms' series exist once observed; list them whether or not they were.
    for family in metrics.REGISTRY.collect():
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_every_alert() -> None:
    result = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    defined = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    assert tested == defined, "every alert has a promtool test"


def test_rules_and_dashboard_use_exported_metrics() -> None:
    metrics.bound("names")  # every child once, so every family is listed
    exported = exported_names()
    for path in (RULES, DASHBOARD):
        used = set(_METRIC.findall(path.read_text()))
        assert used, path
        assert used <= exported, f"{path.name} uses unknown metrics: {used - exported}"


def test_dashboard_is_valid_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert len(exprs) >= 20
    assert all('node=~"$node"' in e for e in exprs)
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "node", "app"}
    # Every per-app series is filtered by the app variable too.
    assert all('app=~"$app"' in e for e in exprs if "gateway_connections{" in e)
