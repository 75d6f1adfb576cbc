"""Delivery accounting: what this node handed to sockets and what clients acknowledged.

Counting happens in memory on the hot path; ``flush`` writes the node's running totals to
``PushDelivery`` (one row per push and node, written as totals so a repeated flush is
harmless) and recomputes ``PushLog.delivered``/``acked`` as sums over every node's rows.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from django.db import transaction
from django.db.models import IntegerField, OuterRef, Subquery, Sum
from django.db.models.functions import Coalesce

from push_app.models import PushDelivery, PushLog, PushStatus


@dataclass(slots=True)
class _Totals:
    delivered: int = 0
    acked: int = 0


class DeliveryLedger:
    #: How many recent pushes keep their totals in memory; older acks are not counted.
    max_tracked = 100_000

    def __init__(self, *, node_id: str) -> None:
        self.node_id = node_id
        self._totals: OrderedDict[str, _Totals] = OrderedDict()
        self._dirty: set[str] = set()

    def delivered(self, push_id: str, connections: int) -> None:
        totals = self._totals.get(push_id)
        if totals is None:
            totals = self._totals[push_id] = _Totals()
            if len(self._totals) > self.max_tracked:
                self._totals.popitem(last=False)
        totals.delivered += connections
        self._dirty.add(push_id)

    def acked(self, push_id: str) -> bool:
        """Count a client's ack; False for a push this node never delivered."""
        totals = self._totals.get(push_id)
        if totals is None or totals.acked >= totals.delivered:
            return False
        totals.acked += 1
        self._dirty.add(push_id)
        return True

    def take(self) -> dict[str, tuple[int, int]]:
        """The totals changed since the last take, for ``write`` (on the event loop)."""
        changed = {
            push_id: (self._totals[push_id].delivered, self._totals[push_id].acked)
            for push_id in self._dirty
            if push_id in self._totals
        }
        self._dirty.clear()
        return changed

    def untake(self, changed: dict[str, tuple[int, int]]) -> None:
        """Mark totals from a ``take`` whose ``write`` did not happen as changed again."""
        self._dirty.update(changed)

    def write(self, changed: dict[str, tuple[int, int]]) -> None:
        """Store totals taken by ``take`` (in a database thread)."""
        if not changed:
            return
        with transaction.atomic():
            # Lock the pushes (in id order, so nodes never deadlock) before summing: without
            # it two nodes writing at once each sum without the other's uncommitted row,
            # and the last UPDATE of ``delivered`` loses the other node's share.
            known = set(
                PushLog.objects.select_for_update()
                .filter(id__in=changed)
                .order_by("id")
                .values_list("id", flat=True)
            )
            rows = [
                PushDelivery(push_id=push_id, node_id=self.node_id, delivered=d, acked=a)
                for push_id, (d, a) in changed.items()
                if push_id in known
            ]
            PushDelivery.objects.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["push", "node_id"],
                update_fields=["delivered", "acked", "updated_at"],
            )
            per_push = PushDelivery.objects.filter(push=OuterRef("pk")).values("push")
            PushLog.objects.filter(id__in=known).update(
                delivered=Coalesce(
                    Subquery(per_push.annotate(n=Sum("delivered")).values("n")), 0,
                    output_field=IntegerField(),
                ),
                acked=Coalesce(
                    Subquery(per_push.annotate(n=Sum("acked")).values("n")), 0,
                    output_field=IntegerField(),
                ),
            )
            PushLog.objects.filter(
                id__in=known,
                delivered__gt=0,
                status__in=[PushStatus.ACCEPTED, PushStatus.PUBLISHED],
            ).update(status=PushStatus.DELIVERED)
