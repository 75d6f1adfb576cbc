"""Request budgets, in this node: token buckets, one per API client and one per client
address for failed authentications. The buckets belong to the node
(``gateway_core.ratelimit.RateLimits``): the hot path holds the node, the DRF throttle and
authentication reach it through ``gateway_core.bridge.rate_limits()``.

DRF's stock throttles keep their history in the cache, a read and a write per request;
these buckets cost a dict lookup. The bounds are per process; a client over one gets 429
with ``Retry-After``:

- ``ApiClientRateThrottle``: requests per second per API client
  (GATEWAY_API_RATE_PER_SECOND, 0 turns it off).
- ``AuthFailureThrottle``: failed authentications per minute per client address
  (GATEWAY_API_AUTH_FAILURES_PER_MINUTE, 0 turns it off). Unknown keys cost a database
  lookup each, on the thread that also stores every push: unthrottled, a flood of them
  slows everyone's pushes.
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import Throttled
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from gateway_core import bridge
from gateway_core.conf import gateway_settings
from gateway_core.ratelimit import TokenBuckets
from gateway_core.tenancy import AppLimits
from push_app.models import ApiClient


class ApiClientRateThrottle(BaseThrottle):
    """DRF's throttle over the installed node's per-client buckets."""

    def allow_request(self, request: Request, view: Any) -> bool:
        client = request.auth
        if not isinstance(client, ApiClient) or gateway_settings.api_rate_per_second <= 0:
            return True
        wait_s = take_request(bridge.rate_limits().api_clients, client.pk)
        if wait_s is None:
            return True
        self._wait_s = wait_s
        return False

    def wait(self) -> float | None:
        return max(1.0, getattr(self, "_wait_s", 1.0))


def take_request(buckets: TokenBuckets[int], client_pk: int) -> float | None:
    """Spend one request of ``client_pk``'s bucket: None if allowed, else the seconds until
    the next one would be (the API's paths served without DRF call this too)."""
    rate = gateway_settings.api_rate_per_second
    if rate <= 0:
        return None
    return buckets.take(client_pk, capacity=float(rate), per_s=float(rate))


def take_app_pushes(limits: AppLimits, app: str, count: int) -> None:
    """Spend ``count`` pushes of the app's ``pushes_per_second`` (PROTOCOL.md section 9),
    or 429 with ``Retry-After``, the whole request refused."""
    wait_s = limits.take_pushes(app, count)
    if wait_s is not None:
        raise Throttled(max(1.0, wait_s), detail=(
            f"the app {app!r} is past its pushes_per_second; retry in "
            f"{max(1, int(wait_s + 0.999))} s."))


def rate_limited(wait_s: float) -> Throttled:
    """The 429 that DRF raises for a refused request (with ``Retry-After``)."""
    return Throttled(max(1.0, wait_s))


class AuthFailureThrottle:
    """Failed authentications per client address: a bucket of a minute's budget that
    refills evenly. An address with its budget spent gets 429 before its key is looked
    up; a success costs nothing. Addresses as the server sees them: behind a proxy, its
    address (forwarded headers are not trusted, since anyone can set them)."""

    def __init__(self, buckets: TokenBuckets[str]) -> None:
        self.buckets = buckets

    def wait(self, address: str) -> float | None:
        """Seconds until ``address`` may try a key again, or None if it may now."""
        budget = gateway_settings.api_auth_failures_per_minute
        if budget <= 0:
            return None
        return self.buckets.wait(address, capacity=float(budget), per_s=budget / 60.0)

    def failed(self, address: str) -> None:
        """Spend one attempt of ``address``'s budget."""
        budget = gateway_settings.api_auth_failures_per_minute
        if budget <= 0:
            return
        self.buckets.spend(address, capacity=float(budget), per_s=budget / 60.0)

    @staticmethod
    def throttled(wait_s: float) -> Throttled:
        return Throttled(max(1.0, wait_s), detail="Too many failed authentications from "
                         f"this address; retry in {max(1, int(wait_s + 0.999))} s.")
