"""The client behaviour of PROTOCOL.md section 8 as small pure pieces, tested with injected
clocks and random numbers: reconnect backoff, the dedupe memory, refresh timing, and reading
a token's ``exp``."""

from __future__ import annotations

import base64
import json
import random as _random
from collections import OrderedDict
from collections.abc import Callable
from enum import IntEnum


class CloseCode(IntEnum):
    """The contract's close codes (PROTOCOL.md section 1)."""

    UNAUTHORIZED = 4001
    APP_CONNECTION_LIMIT = 4003
    HEARTBEAT_TIMEOUT = 4008
    REPLACED = 4009
    DISCONNECTED = 4010
    TOKEN_EXPIRED = 4011
    DRAINING = 4012
    FRAME_TOO_BIG = 4013
    TOO_MANY_FRAMES = 4029
    TOO_SLOW = 4030


class Backoff:
    """Full-jitter exponential backoff: a random delay in ``[0, min(max_s, base_s * 2**n))``
    for the n-th attempt in a row, reset once a connection stayed open ``reset_after_s``."""

    def __init__(self, *, base_s: float = 0.5, max_s: float = 30.0, reset_after_s: float = 30.0,
                 random: Callable[[], float] = _random.random) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.reset_after_s = reset_after_s
        self.random = random
        self.attempt = 0

    def next(self) -> float:
        """The delay before the next connection attempt, in seconds."""
        ceiling = min(self.max_s, self.base_s * 2 ** min(self.attempt, 30))
        self.attempt += 1
        return self.random() * ceiling

    def closed_after(self, open_s: float) -> None:
        """A connection that had been open ``open_s`` closed."""
        if open_s >= self.reset_after_s:
            self.attempt = 0


class RecentIds:
    """A bounded memory of handled push ids; the oldest is forgotten first."""

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, push_id: object) -> bool:
        return push_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, push_id: str) -> None:
        if push_id in self._ids:
            return
        self._ids[push_id] = None
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


def refresh_delay_s(exp_s: float, now_s: float, *, margin_s: float = 10.0) -> float:
    """When to refresh a token expiring at ``exp_s`` seen at ``now_s``: ``margin_s`` before
    ``exp``, or at 80% of a remaining lifetime shorter than ``5 * margin_s``."""
    left = exp_s - now_s
    if left <= 0:
        return 0.0
    return left - margin_s if left >= margin_s * 5 else left * 0.8


def token_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT (epoch s), read without checking the signature (the
    client only schedules its refresh with it); None when it cannot be read."""
    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        exp = claims.get("exp")
    except (IndexError, ValueError, AttributeError):
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
