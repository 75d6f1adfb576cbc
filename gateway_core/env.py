"""Everything the gateway reads from the environment, in one place.

Settings import this module once; the rest of the code reads Django settings (through
``gateway_core.conf``), never ``os.environ``, so ``override_settings`` works in tests.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger("gateway.env")


class ConfigError(ImproperlyConfigured, ValueError):
    """A variable is set to something the gateway cannot use (the message names it)."""


# Each reader takes the variables from ``environ`` (default: the process's), so the
# settings table can be tested without touching ``os.environ``.


def text(name: str, default: str, *, environ: Mapping[str, str] | None = None) -> str:
    value = (os.environ if environ is None else environ).get(name, "").strip()
    return value or default


def integer(
    name: str, default: int, *, minimum: int = 0, environ: Mapping[str, str] | None = None
) -> int:
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def flag(
    name: str, default: bool = False, *, environ: Mapping[str, str] | None = None
) -> bool:
    raw = (os.environ if environ is None else environ).get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be on or off, got {raw!r}")


def csv(name: str, default: str, *, environ: Mapping[str, str] | None = None) -> list[str]:
    value = text(name, default, environ=environ)
    return [item.strip() for item in value.split(",") if item.strip()]


def cidrs(name: str, default: str, *, environ: Mapping[str, str] | None = None) -> list[str]:
    """Comma-separated networks (``10.0.0.0/8``, ``::1/128``, or a bare address)."""
    values = csv(name, default, environ=environ)
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{name}: {value!r} is not a network (CIDR)") from exc
    return values


def node_id() -> str:
    return text("GATEWAY_NODE_ID", socket.gethostname() or "node")


def data_dir() -> Path:
    """The data directory, created if missing and made private (0700).

    It holds the SQLite database (payloads, session keys, API key hashes) and the
    generated secrets: nobody but the node's user has any business in it.
    """
    path = Path(text("GATEWAY_DATA_DIR", "./var")).resolve()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _make_private(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if missing, or narrow an existing one to 0600.

    For the SQLite database: sqlite creates its ``-wal``, ``-shm`` and ``-journal`` files
    with the mode of the database file, so a database made 0600 before sqlite first opens
    it keeps all of them private, whatever the umask.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _make_private(path, 0o600)
    else:
        os.close(fd)
    return path


def _make_private(path: Path, mode: int) -> None:
    # Narrow only: a stricter mode the operator chose is kept.
    current = path.stat().st_mode & 0o777
    if current & ~mode:
        try:
            path.chmod(current & mode)
        except OSError as exc:  # not ours (a shared mount): say so, do not refuse to start
            logger.warning("could not make %s private (mode %o): %s", path, current, exc)


@dataclass(frozen=True)
class Secrets:
    django_secret_key: str
    jwt_secret: str


def load_secrets(directory: Path) -> Secrets:
    """Secrets from the environment, or generated once into ``directory/secrets.json``.

    Generated secrets suit one node; every node of a cluster must be given the same values,
    or tokens minted on one node are refused by the others.
    """
    from_env = {
        "django_secret_key": os.environ.get("DJANGO_SECRET_KEY", "").strip(),
        "jwt_secret": os.environ.get("GATEWAY_JWT_SECRET", "").strip(),
    }
    if all(from_env.values()):
        return Secrets(**from_env)
    path = directory / "secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    changed = False
    for key in from_env:
        if not stored.get(key):
            stored[key] = secrets.token_urlsafe(48)
            changed = True
    if changed:
        # Written through a 0600 descriptor: never readable by others, not even between
        # the write and a chmod.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(json.dumps(stored, indent=2))
        _make_private(path, 0o600)
        logger.warning(
            "Generated secrets into %s. Set DJANGO_SECRET_KEY and GATEWAY_JWT_SECRET to the "
            "same values on every node of a cluster.",
            path,
        )
    return Secrets(
        django_secret_key=from_env["django_secret_key"] or stored["django_secret_key"],
        jwt_secret=from_env["jwt_secret"] or stored["jwt_secret"],
    )
