"""The console's one way of writing a moment: ``2026-11-30 18:32:08 UTC``.

Templates use ``|date:"DATETIME_FORMAT"`` (``console/formats/en/formats.py``); Python code
uses ``when``. Seconds and the timezone always, so pages can be compared line by line.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

PY_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


def when(value: datetime | None) -> str:
    return timezone.localtime(value).strftime(PY_FORMAT) if value else "-"
