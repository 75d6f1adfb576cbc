"""Log records with context: the node id always, and the session id and push id on every
line that concerns one.

Two ways to attach them: ``extra={"session_id": ..., "push_id": ...}`` on one call, or
``log_context(session_id=..., push_id=...)`` (contextvars), which covers every line logged
in that context, including by code that knows nothing of sessions. The consumer binds its
session for the lifetime of its connection's task; the delivery side binds each push while
it handles it.

``GATEWAY_LOG_FORMAT=json`` (settings) writes one JSON object per line with ``ts``,
``level``, ``logger``, ``node``, ``message``, ``session_id``/``push_id`` when known, any
other ``extra`` fields, and ``exc`` for a traceback. The default ``plain`` format appends
``session=…``/``push=…`` to the line instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

session_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gateway_session_id", default=None
)
push_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gateway_push_id", default=None
)

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "node", "context", "session_id", "push_id"}


@contextlib.contextmanager
def log_context(*, session_id: str | None = None, push_id: str | None = None) -> Iterator[None]:
    """Attach ``session_id``/``push_id`` to every record logged inside the block."""
    tokens: list[tuple[contextvars.ContextVar[str | None], contextvars.Token[str | None]]] = []
    if session_id is not None:
        tokens.append((session_id_var, session_id_var.set(session_id)))
    if push_id is not None:
        tokens.append((push_id_var, push_id_var.set(push_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Puts ``node``, ``session_id``, ``push_id`` and a plain ``context`` suffix on records.

    Attached to the handler, so it sees the records of every logger. ``extra`` wins over
    the context variables.
    """

    def __init__(self, node_id: str = "", name: str = "") -> None:
        super().__init__(name)
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node_id
        session = getattr(record, "session_id", None) or session_id_var.get()
        push = getattr(record, "push_id", None) or push_id_var.get()
        record.session_id = session
        record.push_id = push
        parts = []
        if session:
            parts.append(f" session={session}")
        if push:
            parts.append(f" push={push}")
        record.context = "".join(parts)
        return True


class ProbeFilter(logging.Filter):
    """On ``django.request``: a 5xx answer to a health probe (``/healthz``, ``/readyz``) is one
    WARNING line, not an ERROR. A node answers 503 there while it starts or a dependency is
    away: that is the probe doing its job, and the answer's body names the failing check."""

    PROBE_PATHS = ("/healthz", "/readyz")

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        path = str(getattr(request, "path_info", "") or "").rstrip("/")
        if record.levelno > logging.WARNING and path in self.PROBE_PATHS:
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (log shippers parse it without patterns)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "node": getattr(record, "node", ""),
            "message": record.getMessage(),
        }
        for key in ("session_id", "push_id"):
            value = getattr(record, key, None)
            if value:
                body[key] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                body[key] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            body["stack"] = self.formatStack(record.stack_info)
        return json.dumps(body, default=str, ensure_ascii=False)


def logging_config(*, node_id: str, level: str, log_format: str) -> dict[str, Any]:
    """Django's ``LOGGING`` for ``GATEWAY_LOG_FORMAT`` ``plain`` or ``json``."""
    if log_format not in ("plain", "json"):
        from gateway_core.env import ConfigError

        raise ConfigError(f"GATEWAY_LOG_FORMAT must be plain or json, got {log_format!r}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": ContextFilter, "node_id": node_id},
            "probes": {"()": ProbeFilter},
        },
        "formatters": {
            "plain": {
                "format": "%(asctime)s %(levelname)s %(name)s [%(node)s] %(message)s%(context)s"
            },
            "json": {"()": JsonFormatter},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "filters": ["context"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.request": {"filters": ["probes"]},
            "django.channels.server": {"level": "WARNING"},
            "daphne": {"level": "WARNING"},
            # uvicorn logs every WebSocket handshake at INFO, query string (token) included.
            "uvicorn": {"level": "WARNING"},
            # httpx logs every request at INFO: every webhook call, thousands a second.
            # The outcomes are on each delivery and in the metrics.
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
        },
    }
