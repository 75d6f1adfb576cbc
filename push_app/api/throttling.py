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

from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from gatewaysite.conf import gateway_settings
from push_app.models import ApiClient


class ApiClientRateThrottle(BaseThrottle):
    timer: Callable[[], float] = staticmethod(time.monotonic)
    _buckets: dict[int, tuple[float, float]] = {}
    _lock = threading.Lock()

    def allow_request(self, request: Request, view: Any) -> bool:
        rate = gateway_settings.api_rate_per_second
        client = request.auth
        if rate <= 0 or not isinstance(client, ApiClient):
            return True
        now = self.timer()
        with self._lock:
            tokens, then = self._buckets.get(client.pk, (float(rate), now))
            tokens = min(float(rate), tokens + (now - then) * rate)
            if tokens < 1.0:
                self._buckets[client.pk] = (tokens, now)
                self._wait_s = (1.0 - tokens) / rate
                return False
            self._buckets[client.pk] = (tokens - 1.0, now)
        return True

    def wait(self) -> float | None:
        return max(1.0, getattr(self, "_wait_s", 1.0))
