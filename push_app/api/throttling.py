"""Per-client request rate, in this process: a token bucket per API client.

DRF's stock throttles keep their history in the cache, a read and a write per request;
this bucket costs a dict lookup. The bound is per process (GATEWAY_API_RATE_PER_SECOND,
0 turns it off); a client over it gets 429 with ``Retry-After``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from rest_framework.exceptions import Throttled
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from gatewaysite.conf import gateway_settings
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
