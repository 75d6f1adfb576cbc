"""Reads of the session side: a user's presence across nodes (the REST API), and for the
operator console node health, live sessions, a user.

A node is *alive* while it has not stopped and its last beat is within the node timeout;
a session is *live* only while it is open **and** its node is alive. An open session on a
node that stopped beating is *stale*: the client saw its connection drop, and another node
will soon mark it closed. Nothing here shows a stale session as live.

Every function answers with a fixed number of queries, whatever the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from django.db.models import Count, Q
from django.utils import timezone

from gateway_core.conf import gateway_settings
from gateway_core.tenancy import DEFAULT_APP, AppLoad
from sessions_app.close_codes import REASONS
from sessions_app.models import Node, SessionRecord
from sessions_app.registry import SessionManager

NodeState = Literal["alive", "stopped", "dead"]
SessionState = Literal["live", "stale", "closed"]

#: Close codes as an operator reads them: the contract's, and the protocol's that clients
#: and the recorder (1006 for a node that died) leave behind.
_CLOSE_LABELS: dict[int, str] = {
    **{int(code): reason for code, reason in REASONS.items()},
    1000: "closed by the client",
    1001: "client went away",
    1006: "dropped (no close frame; node died or network)",
}


def alive_since(*, now: datetime | None = None, timeout_s: int | None = None) -> datetime:
    """The oldest last beat a node may have and still count as alive."""
    now = now or timezone.now()
    timeout_s = gateway_settings.node_timeout_s if timeout_s is None else timeout_s
    return now - timedelta(seconds=timeout_s)


def node_alive_q(*, since: datetime, prefix: str = "") -> Q:
    """Alive: not stopped, and beating since ``since`` (``prefix`` reaches the Node from
    another model, e.g. ``node__``). The one definition every reader uses."""
    return Q(**{f"{prefix}stopped_at__isnull": True, f"{prefix}last_seen__gte": since})


def session_state_q(state: SessionState, *, since: datetime) -> Q:
    """A filter on SessionRecord for one state (see the module docstring)."""
    if state == "closed":
        return Q(closed_at__isnull=False)
    alive = node_alive_q(since=since, prefix="node__")
    if state == "live":
        return Q(closed_at__isnull=True) & alive
    return Q(closed_at__isnull=True) & ~alive


def node_state(node: Node, *, since: datetime) -> NodeState:
    if node.stopped_at is not None:
        return "stopped"
    return "alive" if node.last_seen >= since else "dead"


def session_state(record: SessionRecord, *, since: datetime) -> SessionState:
    """Needs ``record.node`` loaded (``select_related("node")``) to stay query-free."""
    if record.closed_at is not None:
        return "closed"
    return "live" if node_state(record.node, since=since) == "alive" else "stale"


def close_label(code: int | None) -> str:
    if code is None:
        return ""
    label = _CLOSE_LABELS.get(code)
    return f"{code} {label}" if label else str(code)


@dataclass(frozen=True, slots=True)
class NodeHealth:
    node: Node
    state: NodeState
    seen_ago_s: float

    @property
    def alive(self) -> bool:
        return self.state == "alive"

    @property
    def seen_ago(self) -> str:
        return ago(self.seen_ago_s)


def ago(seconds: float) -> str:
    """A short "how long ago" for operators: 12 s, 5 min, 3 h, 2 d."""
    s = int(seconds)
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 172800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


def nodes_health(*, now: datetime | None = None, timeout_s: int | None = None) -> list[NodeHealth]:
    """Every node known to the database with its health; alive ones first. One query."""
    now = now or timezone.now()
    since = alive_since(now=now, timeout_s=timeout_s)
    rows = [
        NodeHealth(node=n, state=node_state(n, since=since),
                   seen_ago_s=max(0.0, (now - n.last_seen).total_seconds()))
        for n in Node.objects.all()
    ]
    order = {"alive": 0, "stopped": 1, "dead": 2}
    rows.sort(key=lambda h: (order[h.state], h.node.id))
    return rows


def live_totals(*, now: datetime | None = None, timeout_s: int | None = None) -> dict[str, int]:
    """Live sessions and distinct online users across the cluster. One query."""
    since = alive_since(now=now, timeout_s=timeout_s)
    return SessionRecord.objects.filter(session_state_q("live", since=since)).aggregate(
        sessions=Count("id"), users=Count("user_id", distinct=True)
    )


def user_sessions(*, user_id: str, limit: int = 25,
                  app: str | None = None) -> list[SessionRecord]:
    """A user's open sessions, then their latest closed ones, with nodes (of ``app`` only,
    when given). One query."""
    rows = list(
        SessionRecord.objects.filter(user_id=user_id, **({} if app is None else {"app": app}))
        .select_related("node")
        .order_by("-connected_at")[:limit]
    )
    rows.sort(key=lambda r: r.closed_at is not None)  # stable: open first, each newest first
    return rows


@dataclass(frozen=True, slots=True)
class ConnectionPoint:
    at: datetime
    connections: int


def connection_series(*, now: datetime | None = None, minutes: int = 60,
                      node_id: str | None = None, timeout_s: int | None = None
                      ) -> list[ConnectionPoint]:
    """Connections open at the end of each of the last ``minutes`` minutes (the last point
    is ``now``), across the cluster or on one node. One query.

    Nodes keep no history of their counts (a beat overwrites ``Node.connections``), so the
    series is derived from the sessions' recorded open and close times: a session counts
    from ``connected_at`` until ``closed_at``, and only while its node was alive (beat
    within the node timeout), so the sessions of a node that died stop counting when it
    died, not when another node expired them. A connection younger than the record
    interval is not recorded yet, and pruned sessions (``prunegateway``) are gone.
    """
    now = now or timezone.now()
    timeout = timedelta(seconds=timeout_s if timeout_s is not None
                        else gateway_settings.node_timeout_s)
    first = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    points = [min(first + timedelta(minutes=i + 1), now) for i in range(minutes)]
    rows = SessionRecord.objects.filter(
        Q(closed_at__isnull=True) | Q(closed_at__gt=first), connected_at__lte=now,
        node__last_seen__gte=first - timeout,
    )
    if node_id is not None:
        rows = rows.filter(node_id=node_id)
    counts = rows.aggregate(**{
        f"p{i}": Count("id", filter=Q(connected_at__lte=at, node__last_seen__gte=at - timeout)
                       & (Q(closed_at__isnull=True) | Q(closed_at__gt=at)))
        for i, at in enumerate(points)
    })
    return [ConnectionPoint(at=at, connections=counts[f"p{i}"] or 0)
            for i, at in enumerate(points)]


def node_sessions(*, node_id: str, live: bool, limit: int,
                  since: datetime | None = None) -> list[SessionRecord]:
    """A node's live sessions (oldest first) or its latest closed ones (newest first).
    One query."""
    since = since or alive_since()
    rows = SessionRecord.objects.filter(node_id=node_id)
    if live:
        rows = rows.filter(session_state_q("live", since=since)).order_by("connected_at")
    else:
        rows = rows.filter(closed_at__isnull=False).order_by("-closed_at")
    return list(rows[:limit])


def node_live_counts(*, node_id: str, since: datetime | None = None) -> dict[str, int]:
    """A node's live sessions and distinct users, as recorded. One query."""
    since = since or alive_since()
    return SessionRecord.objects.filter(node_id=node_id).filter(
        session_state_q("live", since=since)
    ).aggregate(sessions=Count("id"), users=Count("user_id", distinct=True))


def session_apps(*, user_id: str) -> set[str]:
    """The apps in which a user of this id has sessions recorded. One query."""
    return set(SessionRecord.objects.filter(user_id=user_id).values_list("app", flat=True)
               .distinct())


def session_exists(*, session_id: str) -> bool:
    """Whether a session of this id is recorded. One query."""
    return SessionRecord.objects.filter(pk=session_id).exists()


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat()


def app_loads(*, exclude: str, timeout_s: int | None = None) -> dict[str, AppLoad]:
    """Per app, the connections and push rate the other live nodes reported at their last
    beat (``Node.apps``). One query."""
    since = alive_since(timeout_s=timeout_s)
    totals: dict[str, AppLoad] = {}
    rows = Node.objects.filter(node_alive_q(since=since)).exclude(id=exclude)
    for apps in rows.values_list("apps", flat=True):
        for app, load in (apps or {}).items():
            if not isinstance(load, dict):
                continue
            before = totals.get(app, AppLoad())
            totals[app] = AppLoad(
                connections=before.connections + int(load.get("connections") or 0),
                pushes_per_s=before.pushes_per_s + float(load.get("pushes_per_s") or 0.0))
    return totals


def user_presence(*, user_id: str, node_id: str, registry: SessionManager,
                  node_timeout_s: int, app: str = DEFAULT_APP) -> dict[str, Any]:
    """The user of ``app``: this node's live sessions from memory, other live nodes' from
    the database."""
    connections: list[dict[str, Any]] = [
        {
            "session": s.session_id,
            "node": node_id,
            "connected_at": _iso(s.connected_at),
            "last_seen": _iso(s.last_seen),
        }
        for s in registry.sessions_of([user_id], app)
    ]
    since = alive_since(timeout_s=node_timeout_s)
    remote = (
        SessionRecord.objects.filter(app=app, user_id=user_id, closed_at__isnull=True)
        .filter(node_alive_q(since=since, prefix="node__"))
        .exclude(node_id=node_id)
        .order_by("connected_at")
    )
    connections.extend(
        {
            "session": r.id,
            "node": r.node_id,
            "connected_at": r.connected_at.isoformat(),
            "last_seen": r.last_seen.isoformat(),
        }
        for r in remote
    )
    return {"user": user_id, "online": bool(connections), "connections": connections}


def live_node_ids(timeout_s: int) -> list[str]:
    """Nodes that beat within ``timeout_s`` and did not stop (routed delivery trusts the
    presence map only while each of them has a marker there)."""
    alive = node_alive_q(since=alive_since(timeout_s=timeout_s))
    return list(Node.objects.filter(alive).values_list("id", flat=True))
