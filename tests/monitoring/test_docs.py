"""docs/monitoring.md names only alerts that exist (issue #17: it named a rule that did not)."""

from __future__ import annotations

import re

import yaml

from monitoring.rules import RULES
from tests.support.gateway import REPO

DOC = REPO / "docs" / "monitoring.md"
PROMETHEUS_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"


def prometheus_alerts() -> set[str]:
    groups = yaml.safe_load(PROMETHEUS_RULES.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_every_alert_the_monitoring_doc_names_exists() -> None:
    named = set(re.findall(r"\bGateway[A-Z][A-Za-z]+\b", DOC.read_text()))
    known = prometheus_alerts() | {rule.name for rule in RULES}
    assert named, "the pattern found no alert names in docs/monitoring.md"
    assert named - known == set(), "docs/monitoring.md names alerts no rule defines"
