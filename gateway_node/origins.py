"""Which browser origins may open ``/ws/`` (``GATEWAY_ALLOWED_ORIGINS``, PROTOCOL.md
section 4).

Unset, any origin may. Set, a handshake whose ``Origin`` header names another origin is
refused with 403 before it is accepted. A handshake without ``Origin`` is allowed: browsers
always send one, so its absence means a server or an app, which the check is not about
(they could write any Origin they liked). Browsers do not apply the same-origin policy to
WebSockets, so without this list any page a user visits could open a connection with the
user's token if the page can get hold of it (e.g. from a URL); the list narrows that to the
operator's own front ends.

Origins are compared after normalising (lower case, default port dropped), so
``https://App.example.com:443`` is ``https://app.example.com``; ``null`` (sandboxed frames,
``file:`` pages) matches only if listed.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import urlsplit

from gateway_core.env import ConfigError

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize(origin: str) -> str:
    """``scheme://host[:port]`` in lower case without a default port; ValueError if ``origin``
    is not an origin."""
    origin = origin.strip().lower()
    if origin == "null":
        return origin
    parts = urlsplit(origin)
    host = parts.hostname
    if not parts.scheme or not host or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username is not None:
        raise ValueError(f"not an origin: {origin!r}")
    port = parts.port  # ValueError on a bad port
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS.get(parts.scheme):
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


@lru_cache(maxsize=8)
def parse(raw: str) -> frozenset[str]:
    """The setting's origins, normalised; parsed once per value of the setting."""
    try:
        return frozenset(normalize(item) for item in raw.split(",") if item.strip())
    except ValueError as exc:
        raise ConfigError(f"GATEWAY_ALLOWED_ORIGINS: {exc}") from exc


def allowed(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a handshake with these (ASGI, lower-case) headers may open ``/ws/``."""
    # Imported here: settings import this module (to check the value at start).
    from gateway_core.conf import gateway_settings

    raw = gateway_settings.allowed_origins
    if not raw:
        return True
    origins = parse(raw)
    for name, value in headers:
        if name == b"origin":
            presented = value.decode("latin-1")
            if presented in origins:  # already in normal form: the common case
                return True
            try:
                return normalize(presented) in origins
            except ValueError:
                return False
    return True
