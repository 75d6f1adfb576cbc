"""Token buckets in memory, owned by the node that creates them.

A node keeps its request budgets in a ``RateLimits`` it creates (``gateway_node.node.GatewayNode``)
and hands to what enforces them: the hot path through the node itself, the DRF throttle and
authentication through ``gateway_core.bridge.rate_limits()``. A fresh node has fresh
buckets; nothing of them lives in a class or module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TokenBuckets(Generic[K]):
    """One bucket per key, each holding up to ``capacity`` tokens and refilling at
    ``per_s`` tokens a second; a key not seen yet has a full bucket. Thread-safe: the DRF
    views spend from their threads, the hot path from the event loop."""

    #: Time, injected: tests set a fixed or stepped clock on the instance.
    timer: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, *, max_keys: int = 100_000) -> None:
        #: Past this many keys the table starts again (keys may be the clients' to choose).
        self.max_keys = max_keys
        self._buckets: dict[K, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, entry: tuple[float, float], capacity: float, per_s: float,
                  now: float) -> float:
        tokens, then = entry
        return min(capacity, tokens + (now - then) * per_s)

    def take(self, key: K, *, capacity: float, per_s: float) -> float | None:
        """Spend a token of ``key``'s bucket: None if there was one, else (nothing spent)
        the seconds until there will be."""
        now = self.timer()
        with self._lock:
            entry = self._buckets.get(key)
            tokens = capacity if entry is None else self._refilled(entry, capacity, per_s, now)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / per_s
            self._store(key, entry, tokens - 1.0, now)
        return None

    def wait(self, key: K, *, capacity: float, per_s: float) -> float | None:
        """Seconds until ``key``'s bucket holds a token, or None if it holds one now."""
        with self._lock:
            entry = self._buckets.get(key)
        if entry is None:
            return None
        tokens = self._refilled(entry, capacity, per_s, self.timer())
        return None if tokens >= 1.0 else (1.0 - tokens) / per_s

    def spend(self, key: K, *, capacity: float, per_s: float) -> None:
        """Spend a token of ``key``'s bucket whether or not it holds one (down to empty)."""
        now = self.timer()
        with self._lock:
            entry = self._buckets.get(key)
            tokens = capacity if entry is None else self._refilled(entry, capacity, per_s, now)
            self._store(key, entry, max(0.0, tokens - 1.0), now)

    def _store(self, key: K, entry: tuple[float, float] | None, tokens: float,
               now: float) -> None:
        if entry is None and len(self._buckets) >= self.max_keys:
            self._buckets.clear()
        self._buckets[key] = (tokens, now)


@dataclass(slots=True)
class RateLimits:
    """A node's request budgets (``push_app.api.throttling`` applies them)."""

    #: Requests per API client (by primary key).
    api_clients: TokenBuckets[int] = field(default_factory=TokenBuckets)
    #: Failed authentications per client address.
    auth_failures: TokenBuckets[str] = field(default_factory=TokenBuckets)
