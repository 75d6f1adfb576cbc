"""The conditions ``runalerts`` evaluates, read from the cluster's database.

Each rule looks at the rows every node writes anyway (``Node``, ``SessionRecord``,
``PushLog``, ``PushDelivery``) at an injected ``now``, and returns what fires now, one
``Finding`` per subject (a node id, or ``""`` for the cluster). A subject that no longer
fires is resolved by the engine. The names match the Prometheus rules in
deploy/prometheus/alerts.yml where the condition is the same; docs/monitoring.md says what
each means and what to do.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Min, Q, Sum

from monitoring.conf import AlertSettings
from monitoring.models import Severity
from push_app.models import PushDelivery, PushLog, PushStatus
from sessions_app.models import Node, SessionRecord
from sessions_app.selectors import alive_since, node_alive_q
from webhooks.models import Endpoint


@dataclass(frozen=True)
class Finding:
    subject: str
    summary: str
    value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


class BaseRule:
    """A condition over the database; ``evaluate`` must be overridden."""

    name = "base"
    severity = Severity.WARNING

    def evaluate(self, *, now: datetime, cfg: AlertSettings) -> list[Finding]:
        raise NotImplementedError(".evaluate() must be overridden")


def _live_nodes(now: datetime, cfg: AlertSettings) -> Q:
    return node_alive_q(since=alive_since(now=now, timeout_s=cfg.node_timeout_s))


class NodeDown(BaseRule):
    """A node stopped beating without stopping cleanly (killed, crashed, cut off)."""

    name = "GatewayNodeDown"
    severity = Severity.CRITICAL

    def evaluate(self, *, now: datetime, cfg: AlertSettings) -> list[Finding]:
        deadline = alive_since(now=now, timeout_s=cfg.node_timeout_s)
        found = []
        # Down: not stopped cleanly, and not alive (sessions_app.selectors.node_alive_q).
        for node in Node.objects.filter(stopped_at__isnull=True, last_seen__lt=deadline):
            silent_s = (now - node.last_seen).total_seconds()
            found.append(Finding(
                subject=node.id, value=silent_s,
                summary=f"node {node.id} has not written its beat for {silent_s:.0f} s "
                        f"(timeout {cfg.node_timeout_s} s) and did not stop cleanly",
                details={"address": node.address, "last_seen": node.last_seen.isoformat(),
                         "connections": node.connections},
            ))
        return found


class RelayBacklog(BaseRule):
    """Pushes stay ``accepted`` (not on the broker) longer than they should."""

    name = "GatewayRelayBacklog"

    def evaluate(self, *, now: datetime, cfg: AlertSettings) -> list[Finding]:
        rows = (
            PushLog.objects.filter(
                status=PushStatus.ACCEPTED,
                created_at__lt=now - timedelta(seconds=cfg.backlog_age_s),
            )
            .values("accepted_node")
            .annotate(n=Count("id"), oldest=Min("created_at"))
        )
        found = []
        for row in rows:
            if row["n"] < cfg.backlog_min:
                continue
            oldest_s = (now - row["oldest"]).total_seconds()
            found.append(Finding(
                subject=row["accepted_node"], value=row["n"],
                summary=f"{row['n']} push(es) accepted by {row['accepted_node']} are not on the "
                        f"broker after {cfg.backlog_age_s} s (oldest {oldest_s:.0f} s)",
                details={"backlog": row["n"], "oldest_age_s": round(oldest_s, 1)},
            ))
        return found


class PushesFailed(BaseRule):
    """Pushes ran out of ``ttl`` before the broker took them (the broker stayed down)."""

    name = "GatewayPushesFailed"
    severity = Severity.CRITICAL

    def evaluate(self, *, now: datetime, cfg: AlertSettings) -> list[Finding]:
        # The relay fails a push when its ttl runs out (``expires_at``), so that is when
        # it failed; the window looks back from now.
        rows = (
            PushLog.objects.filter(
                status=PushStatus.FAILED,
                expires_at__gt=now - timedelta(seconds=cfg.window_s),
                expires_at__lte=now,
            )
            .values("accepted_node")
            .annotate(n=Count("id"))
        )
        return [
            Finding(
                subject=row["accepted_node"], value=row["n"],
                summary=f"{row['n']} push(es) accepted by {row['accepted_node']} failed in the "
                        f"last {cfg.window_s} s: their ttl ran out before the broker took them",
                details={"failed": row["n"], "window_s": cfg.window_s},
            )
            for row in rows
            if row["n"] >= cfg.failed_min
        ]


class DeliveryStalled(BaseRule):
    """A live node holds sessions of a push's users, connected before the push, and has not
    delivered it: that node consumes nothing, or cannot hand pushes to its sockets."""

    name = "GatewayDeliveryStalled"
    severity = Severity.CRITICAL
    max_pushes = 200
    max_users = 10_000

    def evaluate(self, *, now: datetime, cfg: AlertSettings) -> list[Finding]:
        pushes = list(
            PushLog.objects.filter(
                status__in=[PushStatus.PUBLISHED, PushStatus.DELIVERED],
                created_at__gte=now - timedelta(seconds=cfg.window_s),
                created_at__lte=now - timedelta(seconds=cfg.undelivered_age_s),
            )
            .exclude(expires_at__lte=now)
            .order_by("-created_at")
            .values("id", "broadcast", "users", "created_at")[: self.max_pushes]
        )
        if not pushes:
            return []
        users: set[str] = set()
        for push in pushes:
            if not push["broadcast"] and len(users) < self.max_users:
                users.update(push["users"])
        live = list(
            Node.objects.filter(_live_nodes(now, cfg)).values_list("id", flat=True)
        )
        open_sessions = SessionRecord.objects.filter(closed_at__isnull=True, node__in=live)
        any_broadcast = any(push["broadcast"] for push in pushes)
        # Per node: the earliest connection of each user, and of anyone (for broadcasts).
        first_of: dict[str, dict[str, datetime]] = defaultdict(dict)
        first_any: dict[str, datetime] = {}
        wanted = open_sessions if any_broadcast else open_sessions.filter(user_id__in=users)
        for node_id, user_id, connected_at in wanted.values_list(
            "node_id", "user_id", "connected_at"
        ).iterator():
            if user_id in users:
                known = first_of[node_id].get(user_id)
                if known is None or connected_at < known:
                    first_of[node_id][user_id] = connected_at
            if node_id not in first_any or connected_at < first_any[node_id]:
                first_any[node_id] = connected_at
        delivered: dict[str, set[str]] = defaultdict(set)
        for push_id, node_id in PushDelivery.objects.filter(
            push__in=[p["id"] for p in pushes], delivered__gt=0
        ).values_list("push_id", "node_id"):
            delivered[push_id].add(node_id)
        missed: dict[str, list[str]] = defaultdict(list)
        for push in pushes:
            created = push["created_at"]
            if push["broadcast"]:
                holders = {n for n, first in first_any.items() if first <= created}
            else:
                holders = {
                    n for n, firsts in first_of.items()
                    if any(firsts.get(u, created + timedelta(1)) <= created for u in push["users"])
                }
            for node_id in holders - delivered[push["id"]]:
                missed[node_id].append(push["id"])
        return [
            Finding(
                subject=node_id, value=len(ids),
                summary=f"node {node_id} did not deliver {len(ids)} push(es) to users connected "
                        f"to it, after {cfg.undelivered_age_s} s",
                details={"undelivered": len(ids), "examples": ids[:5]},
            )
            for node_id, ids in sorted(missed.items())
        ]


class PushLatencyHigh(BaseRule):
    """Pushes take long from acceptance to the socket (99th percentile, per node).

    From the database, a push's latency on a node is the first write of its delivery
    counts minus its acceptance: an upper bound that includes up to a second of accounting
    delay (the node writes its counts every second). The histogram
    ``gateway_push_latency_seconds`` is the exact measure.
    """

    name = "GatewayPushLatencyHigh"
    max_samples = 5_000

    def evaluate(self, *, now: datetime, cfg: AlertSettings) -> list[Finding]:
        rows = (
            PushDelivery.objects.filter(
                push__created_at__gte=now - timedelta(seconds=cfg.window_s),
                push__created_at__lte=now, delivered__gt=0,
            )
            .order_by("-push__created_at")
            .values_list("node_id", "push__created_at", "updated_at")[: self.max_samples]
        )
        per_node: dict[str, list[float]] = defaultdict(list)
        for node_id, created, written in rows:
            per_node[node_id].append(max(0.0, (written - created).total_seconds()))
        found = []
        for node_id, samples in sorted(per_node.items()):
            p99 = percentile(samples, 0.99)
            if p99 > cfg.latency_p99_s:
                found.append(Finding(
                    subject=node_id, value=round(p99, 3),
                    summary=f"99% of pushes reached the sockets of {node_id} within {p99:.1f} s "
                            f"over the last {cfg.window_s} s (threshold {cfg.latency_p99_s:g} s)",
                    details={"p99_s": round(p99, 3), "samples": len(samples)},
                ))
        return found


class ConnectionsNearCeiling(BaseRule):
    """A live node holds nearly as many connections as it is sized for."""

    name = "GatewayConnectionsNearCeiling"

    def evaluate(self, *, now: datetime, cfg: AlertSettings) -> list[Finding]:
        ceiling = cfg.connections_ceiling
        if ceiling <= 0:
            return []
        threshold = ceiling * cfg.connections_percent / 100
        return [
            Finding(
                subject=node.id, value=node.connections,
                summary=f"node {node.id} holds {node.connections} connections, "
                        f"{100 * node.connections / ceiling:.0f}% of its ceiling {ceiling}",
                details={"connections": node.connections, "ceiling": ceiling},
            )
            for node in Node.objects.filter(_live_nodes(now, cfg), connections__gte=threshold)
        ]


class WebhookEndpointFailing(BaseRule):
    """Every call to a webhook endpoint has failed for ``GATEWAY_ALERT_WEBHOOK_FAILING``
    seconds (``Endpoint.failing_since``, set at a failure, cleared at a success)."""

    name = "GatewayWebhookEndpointFailing"

    def evaluate(self, *, now: datetime, cfg: AlertSettings) -> list[Finding]:
        rows = Endpoint.objects.filter(
            failing_since__lte=now - timedelta(seconds=cfg.webhook_failing_s)
        ).select_related("client")
        found = []
        for endpoint in rows:
            assert endpoint.failing_since is not None
            failing_s = (now - endpoint.failing_since).total_seconds()
            found.append(Finding(
                subject=endpoint.id, value=round(failing_s),
                summary=f"webhook endpoint {endpoint.url} of {endpoint.client.name} has failed "
                        f"every call for {failing_s / 60:.0f} min",
                details={"client": endpoint.client.name, "app": endpoint.app,
                         "url": endpoint.url, "failing_since": endpoint.failing_since.isoformat()},
            ))
        return found


class ClientAckRatioLow(BaseRule):
    """An API client's pushes, delivered to connections in the window, were acked less than
    ``GATEWAY_ALERT_ACK_RATIO`` % of the time (push log totals: ``acked / delivered``).
    Clients that delivered fewer than ``GATEWAY_ALERT_ACK_MIN`` are not judged."""

    name = "GatewayClientAckRatioLow"

    def evaluate(self, *, now: datetime, cfg: AlertSettings) -> list[Finding]:
        rows = (
            PushLog.objects.filter(created_at__gte=now - timedelta(seconds=cfg.window_s),
                                   created_at__lte=now, client__isnull=False)
            .values("client__name", "app")
            .annotate(delivered=Sum("delivered"), acked=Sum("acked"))
        )
        found = []
        for row in rows:
            delivered, acked = row["delivered"] or 0, row["acked"] or 0
            if delivered < cfg.ack_min:
                continue
            ratio = acked / delivered
            if ratio * 100 < cfg.ack_ratio_percent:
                found.append(Finding(
                    subject=row["client__name"], value=round(ratio, 3),
                    summary=f"only {ratio:.0%} of {row['client__name']}'s {delivered} "
                            f"deliveries in the last {cfg.window_s} s were acked "
                            f"(threshold {cfg.ack_ratio_percent}%)",
                    details={"app": row["app"], "delivered": delivered, "acked": acked},
                ))
        return found


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank percentile (0 for no samples)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


RULES: tuple[BaseRule, ...] = (
    NodeDown(), RelayBacklog(), PushesFailed(), DeliveryStalled(), PushLatencyHigh(),
    ConnectionsNearCeiling(), WebhookEndpointFailing(), ClientAckRatioLow(),
)
