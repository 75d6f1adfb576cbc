"""Typed, read-at-use-time access to the alerting settings (``override_settings`` works).

Each attribute is a row of the settings table (``gateway_core.settings_table``), as in
``gateway_core.conf``; the rows the gateway already declares are shared, not repeated.
"""

from __future__ import annotations

from django.conf import settings

from gateway_core.conf import ALERTS, GatewaySettings
from gateway_core.settings_table import Flag, Integer, Setting, SettingsGroup, Text


class AlertSettings(SettingsGroup):
    connections_ceiling = GatewaySettings.connections_ceiling
    node_timeout_s = GatewaySettings.node_timeout_s

    # ALERTS: rows of docs/monitoring.md's settings table (the README points there). The
    # two channels are described by hand in its channels table.
    webhook_url = Setting(
        Text(), env="GATEWAY_ALERT_WEBHOOK_URL", django="GATEWAY_ALERT_WEBHOOK_URL", default="",
        doc="`runalerts` POSTs each notice here (Alertmanager's webhook shape)",
    )
    email = Setting(
        Flag(), env="GATEWAY_ALERT_EMAIL", django="GATEWAY_ALERT_EMAIL", default=False,
        doc="`runalerts` mails each notice to `DJANGO_ADMINS`",
    )
    interval_s = Setting(
        Integer(minimum=1), env="GATEWAY_ALERT_INTERVAL", django="GATEWAY_ALERT_INTERVAL_S",
        default=30, unit="s", docs=ALERTS,
        doc="between rounds of `runalerts`",
    )
    window_s = Setting(
        Integer(minimum=1), env="GATEWAY_ALERT_WINDOW", django="GATEWAY_ALERT_WINDOW_S",
        default=300, unit="s", docs=ALERTS,
        doc="looked back for failed pushes and latency",
    )
    backlog_age_s = Setting(
        Integer(minimum=1), env="GATEWAY_ALERT_BACKLOG_AGE", django="GATEWAY_ALERT_BACKLOG_AGE_S",
        default=60, unit="s", docs=ALERTS,
        doc="an accepted push older than this counts as backlog",
    )
    backlog_min = Setting(
        Integer(minimum=1), env="GATEWAY_ALERT_BACKLOG_MIN", django="GATEWAY_ALERT_BACKLOG_MIN",
        default=1, docs=ALERTS, doc="backlog pushes that fire",
    )
    failed_min = Setting(
        Integer(minimum=1), env="GATEWAY_ALERT_FAILED_MIN", django="GATEWAY_ALERT_FAILED_MIN",
        default=1, docs=ALERTS, doc="failed pushes in the window that fire",
    )
    undelivered_age_s = Setting(
        Integer(minimum=1), env="GATEWAY_ALERT_UNDELIVERED_AGE",
        django="GATEWAY_ALERT_UNDELIVERED_AGE_S", default=30, unit="s", docs=ALERTS,
        doc="after which an undelivered push to a connected user counts",
    )
    latency_p99_ms = Setting(
        Integer(minimum=1), env="GATEWAY_ALERT_LATENCY_P99_MS",
        django="GATEWAY_ALERT_LATENCY_P99_MS", default=5000, unit="ms", docs=ALERTS,
        doc="push latency threshold (p99)",
    )
    connections_percent = Setting(
        Integer(minimum=1), env="GATEWAY_ALERT_CONNECTIONS_PERCENT",
        django="GATEWAY_ALERT_CONNECTIONS_PERCENT", default=90, unit="%", docs=ALERTS,
        doc="of the connections ceiling",
    )

    webhook_failing_s = Setting(
        Integer(minimum=1), env="GATEWAY_ALERT_WEBHOOK_FAILING",
        django="GATEWAY_ALERT_WEBHOOK_FAILING_S", default=300, unit="s", docs=ALERTS,
        doc="a webhook endpoint whose every call failed this long fires",
    )
    ack_ratio_percent = Setting(
        Integer(minimum=1), env="GATEWAY_ALERT_ACK_RATIO", django="GATEWAY_ALERT_ACK_RATIO",
        default=50, unit="%", docs=ALERTS,
        doc="an API client whose delivered pushes were acked less than this, over the window, "
        "fires",
    )
    ack_min = Setting(
        Integer(minimum=1), env="GATEWAY_ALERT_ACK_MIN", django="GATEWAY_ALERT_ACK_MIN",
        default=20, docs=ALERTS,
        doc="deliveries of a client in the window below which its ack ratio is not judged",
    )

    @property
    def latency_p99_s(self) -> float:
        return self.latency_p99_ms / 1000

    @property
    def extra_notifiers(self) -> dict[str, dict[str, object]]:
        """``GATEWAY_ALERT_NOTIFIERS`` (settings only): ``{name: {"BACKEND": dotted path,
        "CONFIG": {...}}}``, channels beyond the webhook and mail."""
        return dict(getattr(settings, "GATEWAY_ALERT_NOTIFIERS", None) or {})


alert_settings = AlertSettings()
