"""Reads of the push side: a push's status, the console's push aggregates."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Count, Max, Q, Sum, TextField, Value
from django.db.models.functions import Cast, StrIndex, TruncMinute
from django.db.models.lookups import GreaterThan
from django.utils import timezone

from gateway_core.tokens import valid_user_id
from push_app.models import (
    DISCONNECT_ACTIONS,
    WAITING,
    ApiClient,
    ApiRejections,
    AuditEvent,
    PushDelivery,
    PushLog,
    PushRecipient,
    PushStatus,
    RecipientState,
)
from push_app.recipients import shown_state


def push_get(*, client: ApiClient, push_id: str) -> PushLog | None:
    """A push of this client's; other clients' pushes do not exist for it."""
    return PushLog.objects.filter(id=push_id, client=client, app=client.app_id).first()


#: Recipients per page of ``GET /api/v1/push/<id>/recipients``.
RECIPIENTS_PAGE = 100


class BadCursor(ValueError):
    """A ``cursor`` this API did not give."""


def _cursor(user_id: str) -> str:
    return base64.urlsafe_b64encode(user_id.encode()).decode().rstrip("=")


def _after(cursor: str) -> str:
    try:
        user_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadCursor("not a cursor of this endpoint") from exc
    if not valid_user_id(user_id):
        raise BadCursor("not a cursor of this endpoint")
    return user_id


def push_recipients(*, log: PushLog, state: str | None, cursor: str | None,
                    page: int = RECIPIENTS_PAGE, now: datetime | None = None
                    ) -> dict[str, Any]:
    """A targeted push's recipients by user id, ``page`` at a time, optionally of one state
    (as readers see it: ``recipients.shown_state``). ``BadCursor`` for a forged cursor."""
    now = now or timezone.now()
    rows = PushRecipient.objects.filter(push=log).order_by("user_id")
    if cursor:
        rows = rows.filter(user_id__gt=_after(cursor))
    waiting_past = Q(state__in=WAITING, expires_at__lte=now)
    if state == RecipientState.EXPIRED:
        rows = rows.filter(Q(state=state) | waiting_past)
    elif state in WAITING:
        rows = rows.filter(state=state).exclude(waiting_past)
    elif state is not None:
        rows = rows.filter(state=state)
    found = list(rows[:page + 1])
    more = len(found) > page
    found = found[:page]
    return {
        "results": [{
            "user": r.user_id, "state": shown_state(r, now),
            "delivered_at": r.delivered_at.isoformat() if r.delivered_at else None,
            "acked_at": r.acked_at.isoformat() if r.acked_at else None,
            "attempts": r.attempts,
        } for r in found],
        "next": _cursor(found[-1].user_id) if more and found else None,
    }


def recipient_states(*, user_id: str, push_ids: list[str],
                     now: datetime | None = None) -> dict[str, str]:
    """Push id -> the user's state for it (as readers see it), for the pushes that track
    the user (targeted ones). One query."""
    now = now or timezone.now()
    return {r.push_id: shown_state(r, now) for r in PushRecipient.objects.filter(
        push_id__in=push_ids, user_id=user_id).only("push_id", "state", "expires_at")}


def recipient_counts(log: PushLog, now: datetime | None = None) -> dict[str, int]:
    """How many of a push's recipients are in each state (as readers see it). One query."""
    now = now or timezone.now()
    counts: dict[str, int] = {}
    for r in PushRecipient.objects.filter(push=log).only("state", "expires_at"):
        shown = shown_state(r, now)
        counts[shown] = counts.get(shown, 0) + 1
    return counts


def push_describe(log: PushLog) -> dict[str, Any]:
    return {
        "id": log.id,
        "status": log.status,
        "created_at": log.created_at.isoformat(),
        "published_at": log.published_at.isoformat() if log.published_at else None,
        "targets": "all" if log.broadcast else log.target_count,
        "delivered": log.delivered,
        "acked": log.acked,
        "error": log.error or None,
    }


# --- Operator console -------------------------------------------------------------------
# Reads behind the admin dashboard and user page: aggregate queries only, a fixed number
# per call whatever the number of nodes, sessions or pushes.

def users_contain_q(user_id: str) -> Q:
    """PushLogs whose ``users`` list holds ``user_id``, on PostgreSQL and SQLite alike.

    PostgreSQL has JSON containment (``@>``); Django has no such lookup on SQLite, so there
    the list's text is searched for the quoted id with ``instr`` (case-sensitive, where
    ``LIKE`` is not). User ids cannot hold quotes or backslashes (PROTOCOL.md section 1),
    so the quoted id matches exactly one whole element.
    """
    if connection.vendor == "postgresql":
        return Q(users__contains=[user_id])
    position = StrIndex(Cast("users", TextField()), Value(json.dumps(user_id)))
    return Q(GreaterThan(position, 0))


@dataclass(frozen=True, slots=True)
class MinuteBucket:
    start: datetime
    pushes: int = 0
    delivered: int = 0
    acked: int = 0
    failed: int = 0


def push_series(*, now: datetime | None = None, minutes: int = 60) -> list[MinuteBucket]:
    """Pushes accepted per minute over the last ``minutes``, with what they delivered
    (connections), their acks and failures; empty minutes included. One query."""
    now = now or timezone.now()
    first = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    rows = (
        PushLog.objects.filter(created_at__gte=first)
        .annotate(minute=TruncMinute("created_at"))
        .values("minute")
        .annotate(
            pushes=Count("id"), delivered=Sum("delivered"), acked=Sum("acked"),
            failed=Count("id", filter=Q(status=PushStatus.FAILED)),
        )
    )
    by_minute = {row["minute"]: row for row in rows}
    series = []
    for i in range(minutes):
        start = first + timedelta(minutes=i)
        row = by_minute.get(start)
        series.append(
            MinuteBucket(start=start) if row is None else MinuteBucket(
                start=start, pushes=row["pushes"], delivered=row["delivered"] or 0,
                acked=row["acked"] or 0, failed=row["failed"],
            )
        )
    return series


@dataclass(frozen=True, slots=True)
class NodeRates:
    accepted_per_min: float = 0.0
    delivered_per_min: float = 0.0
    last_delivery: datetime | None = None


def node_rates(*, now: datetime | None = None, window_s: int = 300) -> dict[str, NodeRates]:
    """Per node: pushes its API accepted and connections it delivered to, per minute over
    the last ``window_s``, and its last delivery within the hour. Two queries."""
    now = now or timezone.now()
    window_start = now - timedelta(seconds=window_s)
    per_min = 60.0 / window_s
    accepted = dict(
        PushLog.objects.filter(created_at__gte=window_start)
        .values_list("accepted_node").annotate(n=Count("id")).values_list("accepted_node", "n")
    )
    deliveries = (
        PushDelivery.objects.filter(push__created_at__gte=now - timedelta(hours=1))
        .values("node_id")
        .annotate(
            recent=Sum("delivered", filter=Q(push__created_at__gte=window_start)),
            last=Max("updated_at"),
        )
    )
    rates: dict[str, NodeRates] = {}
    for row in deliveries:
        rates[row["node_id"]] = NodeRates(
            accepted_per_min=accepted.pop(row["node_id"], 0) * per_min,
            delivered_per_min=(row["recent"] or 0) * per_min,
            last_delivery=row["last"],
        )
    for node_id, n in accepted.items():
        rates[node_id] = NodeRates(accepted_per_min=n * per_min)
    return rates


def recent_failures(*, since: datetime, limit: int = 10) -> list[PushLog]:
    """The latest failed pushes since ``since``, with their clients. One query."""
    return list(
        PushLog.objects.filter(status=PushStatus.FAILED, created_at__gte=since)
        .select_related("client")
        .defer("data_json")
        .order_by("-created_at")[:limit]
    )


def waiting_count() -> int:
    """Pushes stored but not yet on the broker (``accepted``), of any age. One query."""
    return PushLog.objects.filter(status=PushStatus.ACCEPTED).count()


def pushes_to_user(*, user_id: str, limit: int = 20, since: datetime | None = None,
                   app: str | None = None) -> list[PushLog]:
    """The latest pushes naming ``user_id`` and the latest broadcasts (of ``app`` only,
    when given), newest first, with their clients and per-node deliveries. Two queries."""
    since = since or timezone.now() - timedelta(days=7)
    return list(
        PushLog.objects.filter(created_at__gte=since, **({} if app is None else {"app": app}))
        .filter(users_contain_q(user_id) | Q(broadcast=True))
        .select_related("client")
        .prefetch_related("deliveries")
        .defer("data_json")
        .order_by("-created_at")[:limit]
    )


def push_apps(*, user_id: str) -> set[str]:
    """The apps whose targeted pushes name a user of this id (per-recipient rows; pushes
    from before them count as ``default``'s). One query each."""
    apps = set(PushRecipient.objects.filter(user_id=user_id).values_list("app", flat=True)
               .distinct())
    if not apps and user_named_in_pushes(user_id=user_id):
        apps.add("default")
    return apps


def user_named_in_pushes(*, user_id: str) -> bool:
    """Whether any kept push names ``user_id`` (broadcasts do not count). One query."""
    return PushLog.objects.filter(users_contain_q(user_id)).exists()


#: The console's search shows at most this many pushes matching a term.
PUSH_MATCHES_SHOWN = 20


def pushes_matching(*, term: str, limit: int = PUSH_MATCHES_SHOWN) -> list[PushLog]:
    """Pushes a search term names, newest first, with their clients. One query.

    The term is a push id's start (``01a22d``), a shortened id as the console shows it
    (``01a22d…f871569``), or an idempotency key (exact, of any client).
    """
    if "…" in term:
        head, _, tail = term.partition("…")
        by_id = Q(id__startswith=head, id__endswith=tail) if head and tail else Q(pk=None)
    else:
        by_id = Q(id__startswith=term)
    return list(
        PushLog.objects.filter(by_id | Q(idempotency_key=term))
        .select_related("client")
        .defer("data_json")
        .order_by("-created_at")[:limit]
    )


# --- Audit trail ---------------------------------------------------------------------------

#: How many actions the user page lists.
USER_ACTIONS_SHOWN = 20


def audit_of_user(*, user_id: str, limit: int = USER_ACTIONS_SHOWN) -> list[AuditEvent]:
    """The newest actions on one user (one query)."""
    return list(AuditEvent.objects.filter(user_id=user_id).order_by("-at", "-id")[:limit])


def last_disconnect(*, user_id: str, since: datetime) -> AuditEvent | None:
    """The newest disconnect ordered for this user at or after ``since`` (one query)."""
    return (AuditEvent.objects.filter(user_id=user_id, action__in=DISCONNECT_ACTIONS,
                                      at__gte=since)
            .order_by("-at", "-id").first())


def user_has_audit(*, user_id: str) -> bool:
    return AuditEvent.objects.filter(user_id=user_id).exists()

#: ``ApiRejections``' per-status columns, as the console labels them.
REJECTION_STATUSES = (("s400", "400"), ("s401", "401"), ("s403", "403"), ("s404", "404"),
                      ("s413", "413"), ("s429", "429"), ("other", "other 4xx"))


@dataclass(frozen=True, slots=True)
class Rejections:
    """A client's refused requests since a time (``client_id`` None: unauthenticated)."""

    client_id: int | None
    client_name: str
    total: int
    by_status: dict[str, int]
    last_status: int
    last_code: str
    last_detail: str
    last_error_at: datetime | None


def rejections_since(*, since: datetime, client_id: int | None = None,
                     one_client: bool = False) -> list[Rejections]:
    """Refusals summed over every node since ``since``, busiest first, each with its last
    error; two queries whatever the number of clients and nodes. ``one_client``: only
    ``client_id``'s (None: the unauthenticated line)."""
    rows = ApiRejections.objects.filter(minute__gte=since)
    if one_client:
        rows = rows.filter(client_id=client_id)
    sums: list[dict[str, Any]] = [dict(r) for r in
        rows.values("client_id", "client__name")
        .annotate(n=Sum("total"), last_at=Max("last_error_at"),
                  **{f"n_{c}": Sum(c) for c, _ in REJECTION_STATUSES})
        .order_by("-n", "client__name")
    ]
    if not sums:
        return []
    latest = {(r["client_id"], r["last_at"]) for r in sums}
    last: dict[int | None, ApiRejections] = {}
    for row in rows.filter(last_error_at__in={at for _, at in latest}).only(
            "client_id", "last_status", "last_code", "last_detail", "last_error_at"):
        if (row.client_id, row.last_error_at) in latest:
            last[row.client_id] = row
    out = []
    for r in sums:
        found = last.get(r["client_id"])
        out.append(Rejections(
            client_id=r["client_id"],
            client_name=r["client__name"] or "unauthenticated",
            total=int(r["n"] or 0),
            by_status={label: int(r[f"n_{c}"] or 0) for c, label in REJECTION_STATUSES},
            last_status=found.last_status if found else 0,
            last_code=found.last_code if found else "",
            last_detail=found.last_detail if found else "",
            last_error_at=found.last_error_at if found else None,
        ))
    return out
