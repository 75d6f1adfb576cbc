"""Which webhook URLs the gateway may call (PROTOCOL.md section 7, "Addresses").

A URL must be ``http://`` or ``https://`` with a host. Unless
``GATEWAY_WEBHOOK_ALLOW_PRIVATE`` is on, every address its host resolves to must be public:
not loopback, private, link-local, multicast, reserved or unspecified. Checked when an
endpoint is registered and again before each call, since a name may resolve elsewhere
later (a receiver cannot point the gateway at its own admin or at the cloud's metadata
service by changing a DNS record after registering).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from gateway_core.conf import gateway_settings

MAX_URL_CHARS = 2000

Resolver = Callable[[str, int], Iterable[str]]


class AddressRefused(ValueError):
    """The URL may not be called; the message says why."""


def parse(url: str) -> tuple[str, int]:
    """``(host, port)`` of a callable URL, or ``AddressRefused``."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise AddressRefused(f"a http:// or https:// URL of at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AddressRefused("a http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise AddressRefused("credentials in the URL are not allowed")
    if any(ch.isspace() for ch in url):
        raise AddressRefused("a URL has no whitespace")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified)


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (blocking)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def check_addresses(host: str, addresses: Iterable[str]) -> None:
    found = list(addresses)
    if not found:
        raise AddressRefused(f"{host} does not resolve")
    private = [a for a in found if not is_public(a)]
    if private:
        raise AddressRefused(
            f"{host} resolves to a loopback, private, link-local or multicast address "
            f"({private[0]}); set GATEWAY_WEBHOOK_ALLOW_PRIVATE=1 to allow it")


def check_url(url: str, *, resolver: Resolver = resolve) -> None:
    """At registration (blocking): ``AddressRefused`` unless the URL may be called."""
    host, port = parse(url)
    if gateway_settings.webhook_allow_private:
        return
    try:
        addresses = list(resolver(host, port))
    except OSError as exc:
        raise AddressRefused(f"{host} does not resolve ({exc})") from None
    check_addresses(host, addresses)


class SendTimeCheck:
    """Before each call: the same check, answers cached ``ttl_s`` per host so that
    thousands of calls a second to one receiver cost no lookup each."""

    ttl_s = 30.0

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._cache: dict[tuple[str, int], tuple[float, str | None]] = {}

    async def refused(self, url: str) -> str | None:
        """None if ``url`` may be called now, else why not."""
        try:
            host, port = parse(url)
        except AddressRefused as exc:
            return str(exc)
        if gateway_settings.webhook_allow_private:
            return None
        now = self.clock()
        cached = self._cache.get((host, port))
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
            check_addresses(host, {str(info[4][0]) for info in infos})
            verdict: str | None = None
        except OSError as exc:
            verdict = f"{host} does not resolve ({exc})"
        except AddressRefused as exc:
            verdict = str(exc)
        self._cache[(host, port)] = (now, verdict)
        return verdict
