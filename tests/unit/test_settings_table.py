"""The settings table: env parsing, the typed objects, and the README generated from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from gateway_core.conf import GatewaySettings, gateway_settings
from gateway_core.settings_table import Integer, Setting, SettingsGroup, Table, Text
from gatewaysite.settings_table import (
    DOCUMENTS,
    README,
    README_SECTIONS,
    TABLE,
    synced,
    synced_readme,
)
from monitoring.conf import AlertSettings, alert_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_from_an_empty_environment() -> None:
    parsed = TABLE.django_settings({})
    assert parsed["GATEWAY_BROKER"] == "local"
    assert parsed["GATEWAY_HEARTBEAT_INTERVAL_S"] == 25
    assert parsed["GATEWAY_MAX_REQUEST_BYTES"] == 4 * 1024 * 1024
    assert parsed["GATEWAY_NODE_TIMEOUT_S"] == 30
    assert parsed["GATEWAY_ALERT_EMAIL"] is False
    assert parsed["GATEWAY_METRICS_ALLOW"][0] == "127.0.0.0/8"
    assert set(parsed) == {row.django for row in TABLE.settings}


def test_variables_are_parsed_into_their_django_settings() -> None:
    parsed = TABLE.django_settings({
        "GATEWAY_HEARTBEAT_INTERVAL": " 7 ",
        "GATEWAY_ALERT_EMAIL": "on",
        "GATEWAY_METRICS_ALLOW": "10.0.0.0/8, ::1",
        "GATEWAY_ROCKETMQ_TOPIC": "t",
        "GATEWAY_BROKER": "  ",  # blank: the default
    })
    assert parsed["GATEWAY_HEARTBEAT_INTERVAL_S"] == 7
    assert parsed["GATEWAY_ALERT_EMAIL"] is True
    assert parsed["GATEWAY_METRICS_ALLOW"] == ["10.0.0.0/8", "::1"]
    assert parsed["GATEWAY_ROCKETMQ_TOPIC"] == "t"
    assert parsed["GATEWAY_BROKER"] == "local"


def test_the_loaded_settings_are_the_tables() -> None:
    for row in TABLE.settings:
        assert hasattr(settings, row.django), row


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GATEWAY_MAX_FRAME_BYTES", "15", "GATEWAY_MAX_FRAME_BYTES must be at least 16, got 15"),
        ("GATEWAY_NODE_TIMEOUT", "2", "GATEWAY_NODE_TIMEOUT must be at least 3"),
        ("GATEWAY_HEARTBEAT_INTERVAL", "ten", "GATEWAY_HEARTBEAT_INTERVAL must be a whole number"),
        ("GATEWAY_ALERT_EMAIL", "maybe", "GATEWAY_ALERT_EMAIL must be on or off"),
        ("GATEWAY_METRICS_ALLOW", "10.0.0.0/8,nope", "GATEWAY_METRICS_ALLOW: 'nope'"),
    ],
)
def test_a_bad_value_is_improperly_configured_naming_the_variable(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        TABLE.django_settings({variable: value})


def test_minimums_are_accepted() -> None:
    parsed = TABLE.django_settings(
        {"GATEWAY_MAX_FRAME_BYTES": "16", "GATEWAY_API_RATE_PER_SECOND": "0"}
    )
    assert parsed["GATEWAY_MAX_FRAME_BYTES"] == 16
    assert parsed["GATEWAY_API_RATE_PER_SECOND"] == 0


def test_typed_objects_follow_override_settings() -> None:
    before = gateway_settings.max_frames_per_minute
    with override_settings(
        GATEWAY_MAX_FRAMES_PER_MINUTE=3,
        GATEWAY_METRICS_ALLOW=["10.0.0.0/8"],
        GATEWAY_NODE_TIMEOUT_S=9,
        GATEWAY_ALERT_LATENCY_P99_MS=250,
        REDIS_URL="redis://x",
    ):
        assert gateway_settings.max_frames_per_minute == 3
        assert gateway_settings.metrics_allow == ("10.0.0.0/8",)
        assert gateway_settings.redis_url == "redis://x"
        assert gateway_settings.node_timeout_s == alert_settings.node_timeout_s == 9
        assert alert_settings.latency_p99_s == 0.25
    assert gateway_settings.max_frames_per_minute == before


@override_settings(GATEWAY_HEARTBEAT_TIMEOUT_S="42")
def test_values_are_typed_at_use() -> None:
    assert gateway_settings.heartbeat_timeout_s == 42


def test_monitoring_shares_the_gateways_rows() -> None:
    assert AlertSettings.connections_ceiling is GatewaySettings.connections_ceiling
    assert AlertSettings.node_timeout_s is GatewaySettings.node_timeout_s
    assert len({id(row) for row in TABLE.settings}) == len(TABLE.settings)


def test_each_row_knows_its_attribute_name() -> None:
    for row in TABLE.settings:
        owner = AlertSettings if row in AlertSettings.rows() else GatewaySettings
        assert getattr(owner, row.attribute) is row


def _attributes_used(name: str) -> set[str]:
    used: set[str] = set()
    for path in ROOT.glob("**/*.py"):
        if ".venv" in path.parts or "node_modules" in path.parts:
            continue
        used |= set(re.findall(rf"\b{name}\.([a-z_0-9]+)", path.read_text(errors="replace")))
    return used


def test_every_attribute_the_code_reads_exists() -> None:
    used = _attributes_used("gateway_settings")
    assert {"heartbeat_interval_s", "max_frames_per_minute", "node_id"} <= used
    assert {name for name in used if not hasattr(gateway_settings, name)} == set()
    # The alert rules read the settings as ``cfg`` (the engine hands them alert_settings).
    rules = (ROOT / "monitoring" / "rules.py").read_text()
    alerts = _attributes_used("alert_settings") | set(re.findall(r"\bcfg\.([a-z_0-9]+)", rules))
    assert {"webhook_url", "latency_p99_s", "connections_ceiling"} <= alerts
    assert {name for name in alerts if not hasattr(alert_settings, name)} == set()


def test_names_are_declared_once() -> None:
    class Twice(SettingsGroup):
        a = Setting(Text(), env="X_A", django="X", default="", doc="")
        b = Setting(Integer(), env="X_B", django="X", default=0, doc="")

    with pytest.raises(TypeError, match="django names declared twice"):
        Table(Twice)


def test_readme_rows_are_the_generated_ones() -> None:
    # Regenerate with: python -m gatewaysite.settings_table --write
    assert synced_readme() == README.read_text()
    text = README.read_text()
    for section in README_SECTIONS:
        rows = TABLE.rows(section)
        assert rows
        assert "\n".join(rows) in text


def test_every_document_with_generated_rows_is_in_sync() -> None:
    for path in DOCUMENTS:
        # Regenerate with: python -m gatewaysite.settings_table --write
        assert synced(path) == path.read_text(), path.name


def test_sync_replaces_stale_rows_and_keeps_the_others() -> None:
    stale = "| `GATEWAY_BROKER` | `local` | old words |"
    hand = "| `REDIS_URL` | unset | by hand |"
    text = "\n".join(["| variable | default | meaning |", hand, stale, hand, "", "| v |", stale])
    synced = TABLE.sync(text, README_SECTIONS)
    assert stale not in synced
    assert synced.count(hand) == 2
    assert "\n".join(TABLE.rows(README_SECTIONS[0])) in synced
    assert "\n".join(TABLE.rows(README_SECTIONS[1])) in synced
    with pytest.raises(ValueError, match="no rows"):
        TABLE.sync(hand, README_SECTIONS)


# Variables settings.py (or gateway_core.env for it) reads by hand: computed, or django-axes'.
HAND_WRITTEN = {
    "GATEWAY_NODE_ID", "GATEWAY_JWT_SECRET", "GATEWAY_DATA_DIR", "GATEWAY_LOG_LEVEL",
    "GATEWAY_LOG_FORMAT", "GATEWAY_ADMIN_LOGIN_FAILURES", "GATEWAY_ADMIN_LOCKOUT_MINUTES",
}


def test_every_variable_the_docs_name_is_read() -> None:
    # A renamed variable cannot linger in README.md, PROTOCOL.md or docs/*.md.
    source = "".join(
        (ROOT / name).read_text() for name in ("gatewaysite/settings.py", "gateway_core/env.py")
    )
    assert {name for name in HAND_WRITTEN if f'"{name}"' not in source} == set()
    known = {row.env for row in TABLE.settings} | HAND_WRITTEN | {"GATEWAY_ALERT_NOTIFIERS"}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        named = set(re.findall(r"\bGATEWAY_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
        assert named - known == set(), path.name
