"""Where ``runalerts`` sends its notices: pluggable channels, configured by settings.

Built in: ``webhook`` (``GATEWAY_ALERT_WEBHOOK_URL``: a JSON POST in the shape of
Prometheus Alertmanager's webhook, so one receiver serves both) and ``email``
(``GATEWAY_ALERT_EMAIL=on``: Django's ``mail_admins`` to ``DJANGO_ADMINS``). More channels:
``GATEWAY_ALERT_NOTIFIERS = {"name": {"BACKEND": "dotted.Path", "CONFIG": {...}}}`` in
settings, each a ``BaseNotifier`` subclass.

A notifier raises ``NotificationFailed`` (or anything) when the notice did not go out; the
engine records the error and tries again on its next rounds.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.mail import mail_admins
from django.utils.module_loading import import_string

from monitoring.conf import alert_settings
from monitoring.models import Alert, NotificationKind

#: Alertmanager's "no end yet".
_ZERO_TIME = "0001-01-01T00:00:00Z"


class NotificationFailed(Exception):
    """The channel did not take the notice."""


class BaseNotifier:
    name = "base"

    def __init__(self, *, name: str | None = None, **config: Any) -> None:
        if name:
            self.name = name
        self.config = config

    def send(self, alert: Alert, *, kind: str) -> None:
        raise NotImplementedError(".send() must be overridden")


def _iso(value: datetime | None) -> str:
    return value.isoformat().replace("+00:00", "Z") if value is not None else _ZERO_TIME


def alert_payload(alert: Alert, *, kind: str) -> dict[str, Any]:
    """One alert as Alertmanager's webhook body (version 4) carries it."""
    labels = {"alertname": alert.rule, "severity": alert.severity, "source": "runalerts"}
    if alert.subject:
        labels["node"] = alert.subject
    annotations = {"summary": alert.summary, "description": json.dumps(alert.details)}
    status = "resolved" if kind == NotificationKind.RESOLVED else "firing"
    item = {
        "status": status,
        "labels": labels,
        "annotations": annotations,
        "startsAt": _iso(alert.fired_at),
        "endsAt": _iso(alert.resolved_at if status == "resolved" else None),
        "generatorURL": "",
        "fingerprint": f"{alert.pk:016x}",
        "value": alert.value,
    }
    return {
        "version": "4",
        "receiver": "push-gateway",
        "status": status,
        "groupKey": f"push-gateway/{alert.rule}/{alert.subject}",
        "groupLabels": {"alertname": alert.rule},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "truncatedAlerts": 0,
        "alerts": [item],
    }


class WebhookNotifier(BaseNotifier):
    name = "webhook"
    timeout_s = 5.0
    #: Test seam: ``urlopen(request, timeout=...)``.
    urlopen: Callable[..., Any] = staticmethod(urllib.request.urlopen)

    def send(self, alert: Alert, *, kind: str) -> None:
        url = str(self.config.get("url") or "")
        body = json.dumps(alert_payload(alert, kind=kind)).encode()
        request = urllib.request.Request(
            url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "push-gateway-alerts"},
        )
        try:
            with self.urlopen(request, timeout=self.timeout_s) as response:
                status = getattr(response, "status", 200)
        except urllib.error.HTTPError as exc:
            raise NotificationFailed(f"webhook answered {exc.code}") from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise NotificationFailed(f"webhook unreachable: {exc}") from exc
        if not 200 <= status < 300:
            raise NotificationFailed(f"webhook answered {status}")


class MailAdminsNotifier(BaseNotifier):
    name = "email"

    def send(self, alert: Alert, *, kind: str) -> None:
        word = "RESOLVED" if kind == NotificationKind.RESOLVED else "FIRING"
        where = f" on {alert.subject}" if alert.subject else ""
        lines = [
            alert.summary, "",
            f"alert: {alert.rule}", f"severity: {alert.severity}",
            f"fired at: {_iso(alert.fired_at)}",
        ]
        if alert.resolved_at is not None:
            lines.append(f"resolved at: {_iso(alert.resolved_at)}")
        lines += ["", json.dumps(alert.details, indent=2), "",
                  "What it means and what to do: docs/monitoring.md"]
        mail_admins(f"[{word}] {alert.rule}{where}", "\n".join(lines), fail_silently=False)


def configured_notifiers() -> list[BaseNotifier]:
    """The channels the settings turn on, in a stable order."""
    found: list[BaseNotifier] = []
    if alert_settings.webhook_url:
        found.append(WebhookNotifier(url=alert_settings.webhook_url))
    if alert_settings.email:
        found.append(MailAdminsNotifier())
    for name, spec in alert_settings.extra_notifiers.items():
        try:
            cls = import_string(str(spec["BACKEND"]))
        except (KeyError, ImportError) as exc:
            raise ImproperlyConfigured(
                f"GATEWAY_ALERT_NOTIFIERS[{name!r}] needs a BACKEND that imports: {exc}"
            ) from exc
        config = spec.get("CONFIG") or {}
        assert isinstance(config, dict)
        found.append(cls(name=name, **config))
    return found
