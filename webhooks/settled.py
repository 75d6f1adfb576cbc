"""``push.settled`` (PROTOCOL.md section 7): what became of a push, for each of its users,
sent to the endpoints of the API client that pushed it.

A push settles:
- ``ttl: 0``: ``GATEWAY_SETTLE_AFTER`` seconds after it was published (it has been through
  every node by then; its users' states are ``offline``, ``delivered`` or ``acked``);
- ``ttl > 0``, targeted: when every target user acked, or when the ``ttl`` ran out;
- ``ttl > 0``, broadcast: when the ``ttl`` ran out (not tracked per user: counts only).

Every node scans, once a second, the pushes of the API clients that have an endpoint
wanting ``push.settled`` (since their first such endpoint was made). A push is claimed by
inserting its ``SettledPush`` row (primary key: the push id) in the transaction that stores
its event: two nodes that both see it settle store one event. At the same moment the
client's figures are counted: recipients by outcome (its ack ratio) and time to ack.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q

from gateway_core import metrics
from gateway_core.conf import gateway_settings
from push_app.models import WAITING, PushLog, PushRecipient, RecipientState
from webhooks.models import PUSH_SETTLED, Endpoint, SettledPush
from webhooks.scanning import ScanLoop
from webhooks.services import NewEvent, events_emit

logger = logging.getLogger("gateway.webhooks")

OUTCOMES = ("acked", "delivered", "offline", "expired", "dropped")


def settled_clients() -> dict[int, datetime]:
    """API clients with an endpoint wanting ``push.settled``: since when (their first)."""
    since: dict[int, datetime] = {}
    for client_id, events, created in Endpoint.objects.values_list(
            "client_id", "events", "created_at"):
        if PUSH_SETTLED in events and (client_id not in since or created < since[client_id]):
            since[client_id] = created
    return since


def due_pushes(*, now: datetime, settle_after_s: int, limit: int) -> list[PushLog]:
    """Pushes of those clients that settled and have no event yet, oldest first."""
    clients = settled_clients()
    if not clients:
        return []
    mine = Q()
    for client_id, since in clients.items():
        mine |= Q(client_id=client_id, created_at__gte=since)
    live_only = Q(ttl_s__isnull=True) | Q(ttl_s=0)
    waiting = PushRecipient.objects.filter(push_id=OuterRef("pk")).exclude(
        state=RecipientState.ACKED)
    settled = (
        (live_only & Q(published_at__lte=now - timedelta(seconds=settle_after_s)))
        | (~live_only & Q(expires_at__lte=now))
        | (~live_only & Q(broadcast=False, published_at__isnull=False) & ~Exists(waiting))
    )
    return list(
        PushLog.objects.filter(mine).filter(settled)
        .filter(~Exists(SettledPush.objects.filter(push_id=OuterRef("pk"))))
        .select_related("client").order_by("created_at")[:limit])


def describe(log: PushLog, recipients: list[tuple[str, str, datetime | None, datetime | None]],
             now: datetime) -> dict[str, Any]:
    """The event's data: the push's figures and, targeted, each user by outcome."""
    data: dict[str, Any] = {
        "push": log.id, "status": log.status,
        "targets": "all" if log.broadcast else log.target_count,
        "delivered": log.delivered, "acked": log.acked,
    }
    if log.broadcast:
        return data
    by_outcome: dict[str, list[str]] = {outcome: [] for outcome in OUTCOMES}
    for user, state, expires, _ in recipients:
        by_outcome[_outcome(state, expires, now)].append(user)
    data["recipients"] = {outcome: sorted(users) for outcome, users in by_outcome.items()}
    return data


def _outcome(state: str, expires: datetime | None, now: datetime) -> str:
    if state in WAITING:
        # Settled while waiting: its ttl ran out (a kept push), or, never written to a
        # socket, the user was not there (``pending`` only for kept pushes).
        if expires is not None and expires <= now:
            return "expired"
        return "delivered" if state == RecipientState.DELIVERED else "offline"
    return state if state in OUTCOMES else "offline"


def settle_scan(*, now: float, settle_after_s: int, limit: int = 500) -> int:
    """One scan (on a database thread): store the events of the pushes that settled; how
    many this call claimed."""
    at = datetime.fromtimestamp(now, tz=UTC)
    logs = due_pushes(now=at, settle_after_s=settle_after_s, limit=limit)
    if not logs:
        return 0
    rows: dict[str, list[tuple[str, str, datetime | None, datetime | None]]] = \
        defaultdict(list)
    for push_id, user, state, expires, acked_at in PushRecipient.objects.filter(
            push_id__in=[log.id for log in logs if not log.broadcast]).values_list(
            "push_id", "user_id", "state", "expires_at", "acked_at"):
        rows[push_id].append((user, state, expires, acked_at))
    claimed = 0
    for log in logs:
        data = describe(log, rows.get(log.id, []), at)
        try:
            with transaction.atomic():
                SettledPush.objects.create(push_id=log.id, settled_at=at)
                events_emit([NewEvent(app=log.app, type=PUSH_SETTLED, data=data,
                                      client_id=log.client_id)], now=now)
        except IntegrityError:
            continue  # another node settled it first
        claimed += 1
        _count(log, data, rows.get(log.id, []))
    return claimed


def _count(log: PushLog, data: dict[str, Any],
           recipients: list[tuple[str, str, datetime | None, datetime | None]]) -> None:
    """The API client's delivery figures, once per push, by the node that settled it."""
    node = gateway_settings.node_id
    metrics.WEBHOOK_EVENTS.labels(node, log.app, PUSH_SETTLED).inc()
    if log.broadcast or log.client is None:
        return
    client = log.client.name
    for outcome, users in data["recipients"].items():
        if users:
            metrics.RECIPIENT_OUTCOMES.labels(node, log.app, client, outcome).inc(len(users))
    if log.published_at is not None:
        histogram = metrics.TIME_TO_ACK.labels(node, log.app, client)
        for _, _, _, acked_at in recipients:
            if acked_at is not None:
                histogram.observe(max(0.0, (acked_at - log.published_at).total_seconds()))


class SettleWatcher(ScanLoop):
    """The node's loop: a scan every ``interval_s``; ``on_emitted`` wakes the sender."""

    what = "settle"

    async def scan_once(self) -> int:
        claimed: int = await self.db(settle_scan, now=self.clock(),
                                     settle_after_s=gateway_settings.settle_after_s)
        if claimed:
            self.on_emitted()
        return claimed
