"""The outbox's database side: claim due deliveries, write what became of them.

Runs on the sender's database thread (``webhooks.sender``). Claims are leases: a
conditional UPDATE sets ``lease_token``/``lease_until`` only on rows whose lease is free or
ran out, so two nodes polling at once never both take a delivery, and the deliveries of a
node that died are taken over once their lease runs out. Outcomes are written only where
the lease is still this claim's (a redelivery from the admin clears it), in batches.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import transaction
from django.db.models import Count, Min, Q
from django.db.models.functions import Coalesce

from webhooks.models import Delivery, DeliveryState, Endpoint

#: Backoff before retry n (1-based): 1 s doubling, capped (PROTOCOL.md section 7).
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 600.0


def retry_delay_s(attempts: int) -> float:
    """Seconds before the next attempt, after ``attempts`` failed ones."""
    return min(FIRST_RETRY_S * 2 ** max(attempts - 1, 0), MAX_RETRY_S)


def _dt(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


@dataclass(frozen=True, slots=True)
class Claimed:
    """One delivery this node holds the lease of, with what its call needs."""

    id: int
    token: str
    endpoint_id: str
    url: str
    secret: str
    event_id: str
    body: bytes
    attempts: int
    created_at: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt gave: ``status`` 0 when there was no HTTP answer."""

    claimed: Claimed
    ok: bool
    status: int
    excerpt: str
    at: float


def _lease_free(now: datetime) -> Q:
    return Q(lease_until__isnull=True) | Q(lease_until__lt=now)


def claim(*, node_id: str, now: float, room: Mapping[str, int], default_room: int,
          limit: int, lease_s: float) -> list[Claimed]:
    """Take the leases of up to ``limit`` due deliveries, at most ``room[endpoint]`` (or
    ``default_room``) for each endpoint, oldest due first."""
    at = _dt(now)
    full = [endpoint for endpoint, free in room.items() if free <= 0]
    due = (Delivery.objects.filter(state=DeliveryState.PENDING, next_attempt_at__lte=at)
           .filter(_lease_free(at)).exclude(endpoint_id__in=full)
           .order_by("next_attempt_at").values_list("id", "endpoint_id")[:limit])
    taken: dict[str, int] = {}
    ids: list[int] = []
    for delivery_id, endpoint_id in due:
        if taken.get(endpoint_id, 0) >= room.get(endpoint_id, default_room):
            continue
        taken[endpoint_id] = taken.get(endpoint_id, 0) + 1
        ids.append(delivery_id)
        if len(ids) >= limit:
            break
    if not ids:
        return []
    token = uuid.uuid4().hex
    updated = (Delivery.objects.filter(id__in=ids, state=DeliveryState.PENDING)
               .filter(_lease_free(at))
               .update(lease_token=token, lease_until=at + timedelta(seconds=lease_s),
                       lease_node=node_id))
    if not updated:
        return []
    rows = (Delivery.objects.filter(id__in=ids, lease_token=token)
            .values_list("id", "endpoint_id", "endpoint__url", "endpoint__secret", "event_id",
                         "event__body", "attempts", "created_at"))
    return [Claimed(id=r[0], token=token, endpoint_id=r[1], url=r[2], secret=r[3],
                    event_id=r[4], body=r[5].encode(), attempts=r[6],
                    created_at=r[7].timestamp())
            for r in rows]


def complete(outcomes: Iterable[Outcome], *, retry_hours: int) -> int:
    """Write each attempt's outcome (delivered, retry later, or failed once the retry
    window is over) and each endpoint's last success or failure; the number failed.

    Outcomes alike (same result, status, answer and attempt number) are written by one
    UPDATE: thousands of calls a second to one receiver are a few statements, not a row
    each (an UPDATE with a CASE per row and field costs SQLite a quadratic scan)."""
    outcomes = list(outcomes)
    if not outcomes:
        return 0
    groups: dict[tuple[bool, int, str, int, bool], list[Outcome]] = {}
    for out in outcomes:
        key = (out.ok, out.status, out.excerpt[:500], out.claimed.attempts,
               _gives_up(out, retry_hours))
        groups.setdefault(key, []).append(out)
    failed = 0
    with transaction.atomic():
        for (ok, status, excerpt, attempts, gives_up), group in groups.items():
            at = max(out.at for out in group)
            fields: dict[str, object] = {
                "attempts": attempts + 1, "last_attempt_at": _dt(at), "last_status": status,
                "last_response": excerpt, "lease_token": "", "lease_until": None,
                "lease_node": ""}
            if ok:
                fields.update(state=DeliveryState.DELIVERED, delivered_at=_dt(at))
            else:
                fields.update(state=DeliveryState.FAILED if gives_up else DeliveryState.PENDING,
                              next_attempt_at=_dt(at + retry_delay_s(attempts + 1)))
                failed += len(group) if gives_up else 0
            # Only rows still under these claims' leases: one the admin redelivered
            # meanwhile keeps its new, immediate attempt.
            for chunk in _chunks(group, 500):
                Delivery.objects.filter(
                    id__in=[out.claimed.id for out in chunk],
                    lease_token__in={out.claimed.token for out in chunk},
                ).update(**fields)
        _mark_endpoints(outcomes)
    return failed


def cycle(outcomes: list[Outcome], *, retry_hours: int, node_id: str, now: float,
          room: Mapping[str, int], default_room: int, limit: int,
          lease_s: float) -> tuple[int, list[Claimed]]:
    """``complete`` the outcomes gathered, then ``claim`` what is due, in one transaction:
    one commit a round, not two (on SQLite every commit of the outbox is one the node's
    push writes wait behind). ``(failed, claimed)``."""
    with transaction.atomic():
        failed = complete(outcomes, retry_hours=retry_hours)
        claimed = claim(node_id=node_id, now=now, room=room, default_room=default_room,
                        limit=limit, lease_s=lease_s)
    return failed, claimed


def _gives_up(out: Outcome, retry_hours: int) -> bool:
    """Whether this failure was the last attempt: the next would start after the retry
    window (counted from the event's delivery creation)."""
    if out.ok:
        return False
    retry_at = out.at + retry_delay_s(out.claimed.attempts + 1)
    return retry_at > out.claimed.created_at + retry_hours * 3600


def _chunks(items: list[Outcome], size: int) -> Iterable[list[Outcome]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _mark_endpoints(outcomes: list[Outcome]) -> None:
    last: dict[str, Outcome] = {}
    succeeded: dict[str, float] = {}
    failed: dict[str, float] = {}
    for out in sorted(outcomes, key=lambda o: o.at):
        endpoint = out.claimed.endpoint_id
        last[endpoint] = out
        (succeeded if out.ok else failed)[endpoint] = out.at
    for endpoint, out in last.items():
        fields: dict[str, object] = {}
        if endpoint in succeeded:
            fields["last_success_at"] = _dt(succeeded[endpoint])
        if endpoint in failed:
            fields["last_failure_at"] = _dt(failed[endpoint])
        if out.ok:
            fields["failing_since"] = None
        else:
            # Failing since its first failure after a success, not since the latest one.
            fields["failing_since"] = Coalesce("failing_since", _dt(out.at))
        Endpoint.objects.filter(id=endpoint).update(**fields)


def release(*, tokens: Iterable[str] = (), node_id: str | None = None) -> int:
    """Give leases back: this node's claims not attempted (at stop), or every lease left by
    an earlier process with this node id (at start: that process is gone)."""
    qs = Delivery.objects.filter(state=DeliveryState.PENDING)
    if node_id is not None:
        qs = qs.filter(lease_node=node_id)
    else:
        qs = qs.filter(lease_token__in=list(tokens))
    return qs.exclude(lease_token="").update(lease_token="", lease_until=None, lease_node="")


@dataclass(frozen=True, slots=True)
class Backlog:
    pending: int
    oldest_age_s: float
    #: API client name -> seconds its longest-failing endpoint has been failing.
    failing_s: dict[str, float]


def backlog(*, now: float) -> Backlog:
    """Deliveries not yet sent, the oldest one's age, and the failing endpoints: for the
    metrics (each node reads the cluster's figures)."""
    agg = Delivery.objects.filter(state=DeliveryState.PENDING).aggregate(
        n=Count("id"), oldest=Min("created_at"))
    oldest = agg["oldest"]
    failing: dict[str, float] = {}
    for name, since in (Endpoint.objects.filter(failing_since__isnull=False)
                        .values_list("client__name", "failing_since")):
        if since is not None:
            failing[name] = max(failing.get(name, 0.0), now - since.timestamp())
    return Backlog(pending=agg["n"] or 0,
                   oldest_age_s=max(0.0, now - oldest.timestamp()) if oldest else 0.0,
                   failing_s=failing)
