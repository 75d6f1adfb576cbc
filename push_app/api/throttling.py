"""Request budgets, in this process: token buckets, one per API client and one per client
address for failed authentications.

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

import threading
import time
from collections.abc import Callable
from typing import Any

from rest_framework.exceptions import Throttled
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from gateway_core.conf import gateway_settings
from push_app.models import ApiClient


class ApiClientRateThrottle(BaseThrottle):
    timer: Callable[[], float] = staticmethod(time.monotonic)
    _buckets: dict[int, tuple[float, float]] = {}
    _lock = threading.Lock()

    def allow_request(self, request: Request, view: Any) -> bool:
        client = request.auth
        if not isinstance(client, ApiClient):
            return True
        wait_s = self.take(client.pk)
        if wait_s is None:
            return True
        self._wait_s = wait_s
        return False

    def wait(self) -> float | None:
        return max(1.0, getattr(self, "_wait_s", 1.0))

    @classmethod
    def take(cls, client_pk: int) -> float | None:
        """Spend one request of ``client_pk``'s bucket: None if allowed, else the seconds
        until the next one would be (the API's paths served without DRF call this too)."""
        rate = gateway_settings.api_rate_per_second
        if rate <= 0:
            return None
        now = cls.timer()
        with cls._lock:
            tokens, then = cls._buckets.get(client_pk, (float(rate), now))
            tokens = min(float(rate), tokens + (now - then) * rate)
            if tokens < 1.0:
                cls._buckets[client_pk] = (tokens, now)
                return (1.0 - tokens) / rate
            cls._buckets[client_pk] = (tokens - 1.0, now)
        return None

    @classmethod
    def throttled(cls, wait_s: float) -> Throttled:
        """The 429 that DRF raises for a refused request (with ``Retry-After``)."""
        return Throttled(max(1.0, wait_s))


class AuthFailureThrottle:
    """Failed authentications per client address: a bucket of a minute's budget that
    refills evenly. An address with its budget spent gets 429 before its key is looked
    up; a success costs nothing. Addresses as the server sees them: behind a proxy, its
    address (forwarded headers are not trusted, since anyone can set them)."""

    timer: Callable[[], float] = staticmethod(time.monotonic)
    max_addresses = 100_000
    _buckets: dict[str, tuple[float, float]] = {}
    _lock = threading.Lock()

    @classmethod
    def wait(cls, address: str) -> float | None:
        """Seconds until ``address`` may try a key again, or None if it may now."""
        budget = gateway_settings.api_auth_failures_per_minute
        if budget <= 0:
            return None
        with cls._lock:
            entry = cls._buckets.get(address)
        if entry is None:
            return None
        tokens = cls._refilled(entry, budget)
        return None if tokens >= 1.0 else (1.0 - tokens) * 60.0 / budget

    @classmethod
    def failed(cls, address: str) -> None:
        """Spend one attempt of ``address``'s budget."""
        budget = gateway_settings.api_auth_failures_per_minute
        if budget <= 0:
            return
        with cls._lock:
            entry = cls._buckets.get(address)
            tokens = float(budget) if entry is None else cls._refilled(entry, budget)
            if entry is None and len(cls._buckets) >= cls.max_addresses:
                cls._buckets.clear()  # bounded: addresses are the clients' to choose
            cls._buckets[address] = (max(0.0, tokens - 1.0), cls.timer())

    @classmethod
    def _refilled(cls, entry: tuple[float, float], budget: int) -> float:
        tokens, then = entry
        return min(float(budget), tokens + (cls.timer() - then) * budget / 60.0)

    @classmethod
    def throttled(cls, wait_s: float) -> Throttled:
        return Throttled(max(1.0, wait_s), detail="Too many failed authentications from "
                         f"this address; retry in {max(1, int(wait_s + 0.999))} s.")
