"""Requests the REST API refused (4xx), counted per API client on this node.

Counting happens in memory (``RejectionCounter.count``: no database write per request),
on the hot path's event loop and in the DRF views' threads alike, so under a lock. The
node's housekeeping takes what was counted and ``write``\\ s it, as increments, to
``ApiRejections``: one row per client, node and minute. A request no client could be
found for (a 401 for a missing or unknown key) is counted
with ``client_id`` None, the console's "unauthenticated" line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import transaction
from django.db.models import F

from push_app.models import ApiClient, ApiRejections

#: The statuses counted on their own; any other 4xx is counted as ``other``.
STATUSES = (400, 401, 403, 404, 413, 429)
#: How much of an error's detail is kept.
DETAIL_CHARS = 200


@dataclass(slots=True)
class LastError:
    status: int
    code: str
    detail: str
    at: float  # epoch seconds


@dataclass(slots=True)
class Bucket:
    """One client's refusals in one minute, since the last take."""

    by_status: dict[int, int] = field(default_factory=dict)
    last: LastError | None = None

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    def merge(self, other: Bucket) -> None:
        for status, n in other.by_status.items():
            self.by_status[status] = self.by_status.get(status, 0) + n
        if other.last is not None and (self.last is None or other.last.at >= self.last.at):
            self.last = other.last


#: ``(client_id or None, minute start in epoch seconds)``
Key = tuple[int | None, int]


class RejectionCounter:
    """This node's uncommitted counts. ``clock`` is the test seam (epoch seconds)."""

    #: Buckets kept between writes; past it, new clients' refusals are not counted (a
    #: database down for long under a flood of bad keys must not grow memory without end).
    max_buckets = 10_000

    def __init__(self, *, node_id: str, clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self.clock = clock
        self._buckets: dict[Key, Bucket] = {}
        self._lock = threading.Lock()

    def count(self, *, client_id: int | None, status: int, code: str, detail: str) -> None:
        """Count one refused request (any thread). Not a 4xx: not counted."""
        if not 400 <= status < 500:
            return
        now = self.clock()
        key = (client_id, int(now // 60) * 60)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_buckets:
                    return
                bucket = self._buckets[key] = Bucket()
            slot = status if status in STATUSES else 0
            bucket.by_status[slot] = bucket.by_status.get(slot, 0) + 1
            bucket.last = LastError(status, code[:64], detail[:DETAIL_CHARS], now)

    def take(self) -> dict[Key, Bucket]:
        """What was counted since the last take, for ``write``."""
        with self._lock:
            taken, self._buckets = self._buckets, {}
        return taken

    def parts(self, taken: dict[Key, Bucket]) -> list[dict[Key, Bucket]]:
        """One part: refusals come in tens a second, not thousands."""
        return [taken]

    def untake(self, taken: dict[Key, Bucket]) -> None:
        """Put back counts from a ``take`` whose ``write`` did not happen."""
        with self._lock:
            for key, bucket in taken.items():
                mine = self._buckets.get(key)
                if mine is None:
                    self._buckets[key] = bucket
                else:
                    bucket.merge(mine)
                    self._buckets[key] = bucket

    def write(self, taken: dict[Key, Bucket]) -> None:
        """Add counts from ``take`` to ``ApiRejections`` (in a database thread). Only
        this node writes its rows, so an UPDATE that finds none may INSERT."""
        if not taken:
            return
        ids = {client_id for client_id, _ in taken if client_id is not None}
        # A client deleted since its refusals were counted: they go with it.
        known = set(ApiClient.objects.filter(pk__in=ids).values_list("pk", flat=True))
        with transaction.atomic():
            for (client_id, minute_s), bucket in sorted(
                    taken.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1])):
                if client_id is not None and client_id not in known:
                    continue
                minute = datetime.fromtimestamp(minute_s, tz=UTC)
                counts = {_column(s): n for s, n in bucket.by_status.items()}
                last = bucket.last
                assert last is not None, "a bucket is made by a count"
                last_fields = {
                    "last_status": last.status, "last_code": last.code,
                    "last_detail": last.detail,
                    "last_error_at": datetime.fromtimestamp(last.at, tz=UTC),
                }
                rows = ApiRejections.objects.filter(
                    client_id=client_id, node_id=self.node_id, minute=minute)
                updated = rows.update(
                    total=F("total") + bucket.total,
                    **{c: F(c) + n for c, n in counts.items()}, **last_fields,
                )
                if not updated:
                    ApiRejections.objects.create(
                        client_id=client_id, node_id=self.node_id, minute=minute,
                        total=bucket.total, **counts, **last_fields,
                    )


def _column(status: int) -> str:
    return f"s{status}" if status in STATUSES else "other"
