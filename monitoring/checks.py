"""System checks of the alerting configuration (ids ``monitoring.W001``...)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Warning, register


@register()
def alert_channels(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    found: list[CheckMessage] = []
    if getattr(settings, "GATEWAY_ALERT_EMAIL", False) and not settings.ADMINS:
        found.append(Warning(
            "GATEWAY_ALERT_EMAIL is on but nobody would get the mail",
            hint="Set DJANGO_ADMINS to a comma-separated list of addresses.",
            id="monitoring.W001",
        ))
    url = getattr(settings, "GATEWAY_ALERT_WEBHOOK_URL", "")
    if url and not url.startswith(("http://", "https://")):
        found.append(Warning(
            f"GATEWAY_ALERT_WEBHOOK_URL is not an http(s) URL: {url!r}",
            id="monitoring.W002",
        ))
    return found
