"""Who may read ``/metrics`` (PROTOCOL.md sections 3 and 4).

The metrics name the API clients and show the node's load, so they are not public: a peer
whose address is in ``GATEWAY_METRICS_ALLOW`` (CIDRs; default loopback and the private
networks, where a Prometheus usually scrapes from) may read them, and so may anyone who
presents ``Authorization: Bearer <GATEWAY_METRICS_TOKEN>`` (for a scraper outside those
networks, or behind a proxy that hides its address).

The peer is the TCP peer (the ASGI scope's ``client``, Django's ``REMOTE_ADDR``), never
``X-Forwarded-For``: a client writes that header itself. Behind a reverse proxy every
request comes from the proxy's address, so give such deployments the token and narrow the
allow-list (docs/security.md).
"""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache

from gateway_core.conf import gateway_settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """The parsed allow-list; cached per setting value, so each scrape parses nothing."""
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def peer_allowed(peer: str | None, cidrs: tuple[str, ...]) -> bool:
    if not peer:
        return False  # a unix socket: no address to judge
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
        address = address.ipv4_mapped
    return any(address in network for network in networks(cidrs))


def token_allowed(authorization: str | None, token: str) -> bool:
    if not token or not authorization:
        return False
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Constant time: the comparison must not tell an attacker how much of a guess matched.
    return hmac.compare_digest(presented.strip().encode(), token.encode())


def allowed(*, peer: str | None, authorization: str | None) -> bool:
    """Whether a request from ``peer`` with this ``Authorization`` header may read metrics."""
    return token_allowed(authorization, gateway_settings.metrics_token) or peer_allowed(
        peer, gateway_settings.metrics_allow
    )
