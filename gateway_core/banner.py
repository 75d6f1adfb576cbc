"""What a process talks to, for the one line every command prints on stderr at start.

A terminal without the cluster's exports (docs/cluster.md, ``cluster.env``) silently falls
back to SQLite in ``./var`` and the local broker; this line makes that visible. It names the
database (engine, user, host, port, name) and the broker, never a password.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from gateway_core.conf import gateway_settings


def describe_database(db: dict[str, Any] | None = None) -> str:
    """``db``: one entry of ``DATABASES`` (default: ``default``'s)."""
    if db is None:
        db = dict(settings.DATABASES["default"])
    engine = str(db.get("ENGINE", "")).rsplit(".", 1)[-1]
    name = str(db.get("NAME") or "")
    if engine == "sqlite3":
        return f"sqlite {name}"
    host = str(db.get("HOST") or "localhost")
    port = f":{db['PORT']}" if db.get("PORT") else ""
    user = f"{db['USER']}@" if db.get("USER") else ""
    return f"{engine} {user}{host}{port}/{name}"


def describe_url(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{user}{netloc}").geturl()


def describe_broker() -> str:
    broker = gateway_settings.broker
    if broker == "rocketmq":
        return (f"rocketmq {gateway_settings.rocketmq_endpoint} "
                f"topic {gateway_settings.rocketmq_topic}")
    if broker == "redis":
        return f"redis {describe_url(gateway_settings.redis_url)}"
    return broker


def banner() -> str:
    """``database …; broker …; channel layer …``: one line."""
    redis_url = gateway_settings.redis_url
    layer = f"redis {describe_url(redis_url)}" if redis_url else "in-memory (REDIS_URL unset)"
    return (f"database {describe_database()}; broker {describe_broker()}; "
            f"channel layer {layer}")


def describe_database_line() -> str:
    """``database …``: for commands that use no broker."""
    return f"database {describe_database()}"
