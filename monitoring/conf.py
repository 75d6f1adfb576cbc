"""Typed, read-at-use-time access to the alerting settings (``override_settings`` works)."""

from __future__ import annotations

from django.conf import settings


class AlertSettings:
    @property
    def webhook_url(self) -> str:
        return str(settings.GATEWAY_ALERT_WEBHOOK_URL)

    @property
    def email(self) -> bool:
        return bool(settings.GATEWAY_ALERT_EMAIL)

    @property
    def interval_s(self) -> int:
        return int(settings.GATEWAY_ALERT_INTERVAL_S)

    @property
    def window_s(self) -> int:
        return int(settings.GATEWAY_ALERT_WINDOW_S)

    @property
    def backlog_age_s(self) -> int:
        return int(settings.GATEWAY_ALERT_BACKLOG_AGE_S)

    @property
    def backlog_min(self) -> int:
        return int(settings.GATEWAY_ALERT_BACKLOG_MIN)

    @property
    def failed_min(self) -> int:
        return int(settings.GATEWAY_ALERT_FAILED_MIN)

    @property
    def undelivered_age_s(self) -> int:
        return int(settings.GATEWAY_ALERT_UNDELIVERED_AGE_S)

    @property
    def latency_p99_s(self) -> float:
        return int(settings.GATEWAY_ALERT_LATENCY_P99_MS) / 1000

    @property
    def connections_percent(self) -> int:
        return int(settings.GATEWAY_ALERT_CONNECTIONS_PERCENT)

    @property
    def connections_ceiling(self) -> int:
        return int(settings.GATEWAY_CONNECTIONS_CEILING)

    @property
    def node_timeout_s(self) -> int:
        return int(settings.GATEWAY_NODE_TIMEOUT_S)

    @property
    def extra_notifiers(self) -> dict[str, dict[str, object]]:
        """``GATEWAY_ALERT_NOTIFIERS`` (settings only): ``{name: {"BACKEND": dotted path,
        "CONFIG": {...}}}``, channels beyond the webhook and mail."""
        return dict(getattr(settings, "GATEWAY_ALERT_NOTIFIERS", None) or {})


alert_settings = AlertSettings()
