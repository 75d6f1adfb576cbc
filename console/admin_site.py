"""The operator console: Django's admin site with a live dashboard as its index.

What an operator opens first when a user says "I got no notification": which nodes are
alive, who is online where, what was pushed in the last hour and what failed, and a search
box that answers "is user X online, and did push Y reach them?" (``console/user/``).

The dashboard's live part is rendered by one template, both into the page and as the
fragment that the page polls (``console/live/``), from a fixed number of aggregate queries
(``dashboard_data``); ``console/dashboard.json`` serves the same data to scripts.
Reads come from the apps' selectors; the actions live on the model admins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse
from django.utils import timezone

from gateway_core.conf import gateway_settings
from gateway_core.tenancy import DEFAULT_APP
from gateway_core.tokens import valid_user_id
from push_app.models import AuditAction, AuditActor, AuditEvent, PushLog, PushStatus
from push_app.selectors import (
    PUSH_MATCHES_SHOWN,
    USER_ACTIONS_SHOWN,
    MinuteBucket,
    NodeRates,
    Rejections,
    audit_of_user,
    last_disconnect,
    node_rates,
    push_apps,
    push_series,
    pushes_matching,
    pushes_to_user,
    recent_failures,
    recipient_states,
    rejections_since,
    user_has_audit,
    user_named_in_pushes,
    waiting_count,
)
from push_app.services import audit_record
from sessions_app.models import Node, SessionRecord
from sessions_app.selectors import (
    ConnectionPoint,
    NodeHealth,
    alive_since,
    close_label,
    connection_series,
    live_totals,
    node_live_counts,
    node_sessions,
    node_state,
    nodes_health,
    session_apps,
    session_exists,
    session_state,
    user_sessions,
)

#: How often the dashboard page polls its live part.
REFRESH_MS = 5000
#: The window of the per-node push rates.
RATE_WINDOW_S = 300


def user_url(user_id: str, app: str | None = None) -> str:
    """The console's page of one user (its sessions and pushes); of one app's user of that
    id with ``app`` (PROTOCOL.md section 9: ``u1`` of two apps is two users)."""
    query = {"q": user_id, **({"app": app} if app else {})}
    return reverse("admin:console_user") + "?" + urlencode(query)


def audit_operator(request: HttpRequest, *, action: AuditAction, user_id: str = "",
                   target: str = "", order_id: str = "", reason: str = "") -> None:
    """Record an operator's action in the audit trail (``push_app.models.AuditEvent``)."""
    audit_record(actor_kind=AuditActor.OPERATOR, actor=request.user.get_username(),
                 action=action, user_id=user_id, target=target, order_id=order_id,
                 reason=reason)


def has_view(user: Any, *perms: str) -> bool:
    """``app.view_model`` for each perm, where the change perm implies view (as in admin)."""
    return all(
        user.has_perm(p) or user.has_perm(p.replace(".view_", ".change_")) for p in perms
    )


@dataclass(frozen=True, slots=True)
class OpsLink:
    label: str
    url: str
    title: str


def ops_links() -> list[OpsLink]:
    """Where an operator goes from the console: Grafana (only when
    ``GATEWAY_GRAFANA_URL`` is set), this node's ``/metrics`` and the API docs."""
    links = []
    if gateway_settings.grafana_url:
        links.append(OpsLink("Grafana", gateway_settings.grafana_url,
                             "The gateway's Grafana dashboard (GATEWAY_GRAFANA_URL)"))
    links.append(OpsLink("Metrics", "/metrics",
                         "This node's Prometheus metrics (loopback and private networks, "
                         "or GATEWAY_METRICS_TOKEN)"))
    links.append(OpsLink("API docs", reverse("api-docs"), "The REST API (OpenAPI)"))
    return links


# --- Dashboard data -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NodeRow:
    health: NodeHealth
    rates: NodeRates


@dataclass(frozen=True, slots=True)
class Dashboard:
    now: datetime
    node_timeout_s: int
    nodes: list[NodeRow]
    nodes_alive: int
    connections: int
    users: int
    series: list[MinuteBucket]
    failures: list[PushLog]
    waiting: int
    #: Refused API requests in the last hour, per client, busiest first.
    rejections: list[Rejections]
    #: Connections open at the end of each minute of the last hour, cluster-wide.
    connection_series: list[ConnectionPoint]

    @property
    def rejected(self) -> int:
        return sum(r.total for r in self.rejections)

    @property
    def hour(self) -> dict[str, int]:
        return {
            "pushes": sum(b.pushes for b in self.series),
            "delivered": sum(b.delivered for b in self.series),
            "acked": sum(b.acked for b in self.series),
            "failed": sum(b.failed for b in self.series),
        }


def dashboard_data(*, now: datetime | None = None) -> Dashboard:
    """Everything the dashboard shows, in ten queries whatever the cluster's size."""
    now = now or timezone.now()
    timeout_s = gateway_settings.node_timeout_s
    health = nodes_health(now=now, timeout_s=timeout_s)
    rates = node_rates(now=now, window_s=RATE_WINDOW_S)
    totals = live_totals(now=now, timeout_s=timeout_s)
    return Dashboard(
        now=now,
        node_timeout_s=timeout_s,
        nodes=[NodeRow(health=h, rates=rates.get(h.node.id, NodeRates())) for h in health],
        nodes_alive=sum(1 for h in health if h.alive),
        connections=totals["sessions"],
        users=totals["users"],
        series=push_series(now=now, minutes=60),
        failures=recent_failures(since=now - timedelta(hours=1)),
        waiting=waiting_count(),
        rejections=rejections_since(since=now - timedelta(hours=1)),
        connection_series=connection_series(now=now, minutes=60, timeout_s=timeout_s),
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def dashboard_json(data: Dashboard) -> dict[str, Any]:
    return {
        "now": data.now.isoformat(),
        "node_timeout_s": data.node_timeout_s,
        "totals": {
            "nodes": len(data.nodes), "nodes_alive": data.nodes_alive,
            "connections": data.connections, "users": data.users, "waiting": data.waiting,
            "last_hour": data.hour,
        },
        "nodes": [
            {
                "id": row.health.node.id,
                "state": row.health.state,
                "address": row.health.node.address,
                "broker": row.health.node.broker,
                "last_seen": row.health.node.last_seen.isoformat(),
                "seen_ago_s": round(row.health.seen_ago_s, 1),
                "connections": row.health.node.connections if row.health.alive else 0,
                "users": row.health.node.users if row.health.alive else 0,
                "accepted_per_min": round(row.rates.accepted_per_min, 2),
                "delivered_per_min": round(row.rates.delivered_per_min, 2),
                "last_delivery": _iso(row.rates.last_delivery),
            }
            for row in data.nodes
        ],
        "series": [
            {"start": b.start.isoformat(), "pushes": b.pushes, "delivered": b.delivered,
             "acked": b.acked, "failed": b.failed}
            for b in data.series
        ],
        "connections_series": [
            {"at": p.at.isoformat(), "connections": p.connections}
            for p in data.connection_series
        ],
        "failures": [
            {"id": log.id, "client": log.client.name if log.client else None,
             "created_at": log.created_at.isoformat(), "error": log.error}
            for log in data.failures
        ],
        "rejected_last_hour": [
            {"client_id": r.client_id, "client": r.client_name, "total": r.total,
             "by_status": r.by_status, "last_error": {
                 "status": r.last_status, "error": r.last_code, "detail": r.last_detail,
                 "at": _iso(r.last_error_at)}}
            for r in data.rejections
        ],
    }


# --- The chart: an inline SVG, computed here so the template only places it -------------

CHART_W, CHART_H, CHART_LEFT, CHART_BOTTOM = 720, 180, 36, 20


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (at least 5)."""
    if value <= 5:
        return 5
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover


def chart(series: list[MinuteBucket]) -> dict[str, Any]:
    top = _nice_ceiling(max([1, *(max(b.pushes, b.delivered) for b in series)]))
    plot_w, plot_h = CHART_W - CHART_LEFT, CHART_H - CHART_BOTTOM
    step = plot_w / max(1, len(series))

    def y(value: float) -> float:
        return round(plot_h - value / top * plot_h, 1)

    bars, points, labels = [], [], []
    for i, bucket in enumerate(series):
        x = CHART_LEFT + i * step
        ok = bucket.pushes - bucket.failed
        bars.append({
            "x": round(x + 1, 1), "w": round(step - 2, 1),
            "y": y(ok), "h": round(plot_h - y(ok), 1),
            "fy": y(bucket.pushes), "fh": round(y(ok) - y(bucket.pushes), 1),
            "title": f"{bucket.start:%H:%M} UTC: {bucket.pushes} pushes, {bucket.delivered} "
                     f"delivered, {bucket.acked} acked, {bucket.failed} failed",
        })
        points.append(f"{round(x + step / 2, 1)},{y(bucket.delivered)}")
        # Counted back from the current minute, so the last label is now, not 15 min ago.
        last = i == len(series) - 1
        if (len(series) - 1 - i) % 15 == 0:
            labels.append({"x": round(x + step, 1) if last else round(x, 1),
                           "anchor": "end" if last else "start",
                           "text": f"{bucket.start:%H:%M}"})
    return {
        "w": CHART_W, "h": CHART_H, "left": CHART_LEFT, "plot_h": plot_h,
        "top": top, "mid": f"{top / 2:g}", "y_mid": y(top / 2),
        "bars": bars, "line": " ".join(points), "labels": labels,
        "label_y": CHART_H - 5,
    }


def connections_chart(points: list[ConnectionPoint]) -> dict[str, Any]:
    """The connections line: one point per minute, the last one now."""
    top = _nice_ceiling(max([1, *(p.connections for p in points)]))
    plot_w, plot_h = CHART_W - CHART_LEFT, CHART_H - CHART_BOTTOM
    step = plot_w / max(1, len(points) - 1)

    def y(value: float) -> float:
        return round(plot_h - value / top * plot_h, 1)

    coords, dots, labels = [], [], []
    for i, point in enumerate(points):
        x = round(CHART_LEFT + i * step, 1)
        coords.append(f"{x},{y(point.connections)}")
        dots.append({"x": x, "y": y(point.connections),
                     "title": f"{point.at:%H:%M:%S} UTC: {point.connections} connections"})
        last = i == len(points) - 1
        if (len(points) - 1 - i) % 15 == 0:
            labels.append({"x": x, "anchor": "end" if last else "start",
                           "text": f"{point.at:%H:%M}"})
    return {
        "w": CHART_W, "h": CHART_H, "left": CHART_LEFT, "plot_h": plot_h,
        "top": top, "mid": f"{top / 2:g}", "y_mid": y(top / 2),
        "line": " ".join(coords), "dots": dots, "labels": labels, "label_y": CHART_H - 5,
        "now": points[-1].connections if points else 0,
    }


# --- A node's page: its health, sessions and users ----------------------------------------

#: How many of a node's live sessions, and of its latest closed ones, its page lists.
NODE_SESSIONS_SHOWN = 100
NODE_CLOSED_SHOWN = 20


def node_page_data(node: Node, *, now: datetime | None = None) -> dict[str, Any]:
    """What a node's page shows, in six queries however many sessions it holds."""
    now = now or timezone.now()
    since = alive_since(now=now)
    state = node_state(node, since=since)
    live = node_sessions(node_id=node.id, live=True, limit=NODE_SESSIONS_SHOWN, since=since)
    counts = node_live_counts(node_id=node.id, since=since)
    rates = node_rates(now=now, window_s=RATE_WINDOW_S).get(node.id, NodeRates())
    users: dict[str, int] = {}
    for record in live:
        users[record.user_id] = users.get(record.user_id, 0) + 1
    return {
        "node": node, "state": state,
        "seen_ago": NodeHealth(node=node, state=state,
                               seen_ago_s=max(0.0, (now - node.last_seen).total_seconds())
                               ).seen_ago,
        "live": live, "live_count": counts["sessions"], "user_count": counts["users"],
        "users": sorted(users.items()), "shown": NODE_SESSIONS_SHOWN,
        "closed": [(r, close_label(r.close_code)) for r in node_sessions(
            node_id=node.id, live=False, limit=NODE_CLOSED_SHOWN)],
        "rates": rates, "rate_window_min": RATE_WINDOW_S // 60,
        "chart": connections_chart(connection_series(now=now, minutes=60, node_id=node.id)),
    }


# --- A user's page: online where, and what reached them -----------------------------------

@dataclass(frozen=True, slots=True)
class PushOutcome:
    log: PushLog
    online_nodes: list[str]
    verdict: str
    tone: str  # ok | warn | bad | muted


#: A recipient's state (PROTOCOL.md section 6) as the user page says it.
_RECIPIENT_OUTCOME = {
    "acked": ("received: the client acked it", "ok"),
    "delivered": ("written to the socket; no ack (yet)", "ok"),
    "pending": ("kept: waits for the user's next connection", "warn"),
    "offline": ("user was offline when it was sent (not kept)", "muted"),
    "expired": ("expired before the user acked it", "bad"),
    "dropped": ("dropped: too many kept pushes waited for the user", "bad"),
}


def push_outcome(log: PushLog, *, user_id: str, sessions: list[SessionRecord],
                 state: str | None = None) -> PushOutcome:
    """What a push meant for one user: its per-recipient ``state`` when the push was
    targeted (PROTOCOL.md section 6), else from its counts and the user's sessions then
    (a broadcast's counts only say whether anyone got it).
    """
    at = log.created_at
    online = sorted({
        s.node_id for s in sessions
        if s.connected_at <= at and (s.closed_at is None or s.closed_at >= at)
    })
    single = not log.broadcast and log.target_count == 1
    if log.status == PushStatus.FAILED:
        return PushOutcome(log, online, f"failed: {log.error or 'unknown error'}", "bad")
    if log.status == PushStatus.ACCEPTED and state in (None, "pending", "offline"):
        return PushOutcome(log, online, "stored, not on the broker yet", "warn")
    if state in _RECIPIENT_OUTCOME:
        text, tone = _RECIPIENT_OUTCOME[state]
        return PushOutcome(log, online, text, tone)
    if single and log.acked:
        return PushOutcome(log, online, "received: the client acked it", "ok")
    if single and log.delivered:
        return PushOutcome(log, online, "written to the socket; no ack (yet)", "ok")
    if not online:
        return PushOutcome(log, online, "user was offline when it was sent", "muted")
    if single:
        return PushOutcome(log, online, "published, not delivered (yet)", "warn")
    return PushOutcome(
        log, online, f"{log.delivered} connection(s) of all targets got it", "muted"
    )


#: How long after a disconnect order the user page shows it as pending while the sessions
#: it named are still recorded open (nodes record closes every few seconds; an order still
#: unanswered after this is shown in the actions only).
PENDING_DISCONNECT_S = 120


@dataclass(frozen=True, slots=True)
class PendingDisconnect:
    order: AuditEvent
    sessions: list[SessionRecord]  # live, named by the order, not yet recorded closed


def pending_disconnect(*, user_id: str, live: list[SessionRecord],
                       now: datetime | None = None) -> PendingDisconnect | None:
    """The newest disconnect ordered for the user, while sessions it named are still
    recorded open (one query). A user disconnect names every session connected before it;
    a sessions disconnect names its sessions."""
    now = now or timezone.now()
    order = last_disconnect(user_id=user_id, since=now - timedelta(seconds=PENDING_DISCONNECT_S))
    if order is None:
        return None
    named = set(order.session_ids)
    still_open = [s for s in live if s.connected_at <= order.at and (not named or s.id in named)]
    return PendingDisconnect(order, still_open) if still_open else None


# --- The site ---------------------------------------------------------------------------

class ConsoleAdminSite(admin.AdminSite):
    site_header = "Push gateway console"
    site_title = "Push gateway"
    index_title = "Dashboard"
    index_template = "admin/console/dashboard.html"

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        return {**super().each_context(request), "ops_links": ops_links()}

    def get_urls(self) -> list[URLResolver | URLPattern]:
        console = [
            path("console/live/", self.admin_view(self.live_view), name="console_live"),
            path("console/dashboard.json", self.admin_view(self.json_view),
                 name="console_json"),
            path("console/user/", self.admin_view(self.user_view), name="console_user"),
            path("console/node/<str:node_id>/", self.admin_view(self.node_view),
                 name="console_node"),
        ]
        return console + super().get_urls()

    # Dashboard --------------------------------------------------------------------------

    @staticmethod
    def can_view_dashboard(request: HttpRequest) -> bool:
        return has_view(request.user, "sessions_app.view_node", "push_app.view_pushlog")

    def _live_context(self, request: HttpRequest) -> dict[str, Any]:
        data = dashboard_data()
        return {
            "dash": data, "hour": data.hour, "chart": chart(data.series),
            "connections_chart": connections_chart(data.connection_series),
            "refresh_ms": REFRESH_MS, "rate_window_min": RATE_WINDOW_S // 60,
            "sessions_url": reverse("admin:sessions_app_sessionrecord_changelist",
                                    current_app=self.name),
        }

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None
              ) -> TemplateResponse:
        context: dict[str, Any] = {"console": self.can_view_dashboard(request)}
        if context["console"]:
            context.update(self._live_context(request))
        context.update(extra_context or {})
        return super().index(request, extra_context=context)

    def live_view(self, request: HttpRequest) -> HttpResponse:
        if not self.can_view_dashboard(request):
            raise PermissionDenied
        context = {**self.each_context(request), **self._live_context(request)}
        return TemplateResponse(request, "admin/console/_live.html", context)

    def json_view(self, request: HttpRequest) -> HttpResponse:
        if not self.can_view_dashboard(request):
            raise PermissionDenied
        return JsonResponse(dashboard_json(dashboard_data()))

    # Node ------------------------------------------------------------------------------

    def node_view(self, request: HttpRequest, node_id: str) -> HttpResponse:
        """One node: health, times, counts, its connections over the last hour, its live
        sessions and users, its latest closed sessions."""
        if not has_view(request.user, "sessions_app.view_node",
                        "sessions_app.view_sessionrecord"):
            raise PermissionDenied
        node = Node.objects.filter(pk=node_id).first()
        if node is None:
            raise Http404(f"No node {node_id!r} is recorded.")
        context = {
            **self.each_context(request), **node_page_data(node), "title": f"Node {node.id}",
            "sessions_url": reverse("admin:sessions_app_sessionrecord_changelist",
                                    current_app=self.name),
        }
        return TemplateResponse(request, "admin/console/node.html", context)

    # User ------------------------------------------------------------------------------

    def user_view(self, request: HttpRequest) -> HttpResponse:
        """``?q=``: what an operator pasted, recognised and opened, never invented.

        A whole push id or session id opens its page; a push id's start, a shortened id
        (``01a22d…f871569``) or an idempotency key lists the pushes it names (opening the
        push when it is the only match and no user has that id); a user id that has
        sessions or pushes opens the user's page. Anything else is "not found".
        """
        if not has_view(request.user, "sessions_app.view_sessionrecord",
                        "push_app.view_pushlog"):
            raise PermissionDenied
        query = request.GET.get("q", "").strip()
        if query and PushLog.objects.filter(pk=query).exists():
            return HttpResponseRedirect(
                reverse("admin:push_app_pushlog_change", args=[query], current_app=self.name)
            )
        if query and session_exists(session_id=query):
            return HttpResponseRedirect(reverse(
                "admin:sessions_app_sessionrecord_change", args=[query], current_app=self.name
            ))
        context: dict[str, Any] = {
            **self.each_context(request), "title": "Find a user, push or session",
            "query": query, "subtitle": None, "matches": [],
        }
        if not query:
            return TemplateResponse(request, "admin/console/user.html", context)
        matches = pushes_matching(term=query)
        is_user = valid_user_id(query) and (
            bool(user_sessions(user_id=query, limit=1))
            or user_named_in_pushes(user_id=query)
            or user_has_audit(user_id=query)
        )
        if len(matches) == 1 and not is_user:
            return HttpResponseRedirect(reverse(
                "admin:push_app_pushlog_change", args=[matches[0].pk], current_app=self.name
            ))
        context["matches"] = matches
        context["matches_more"] = len(matches) >= PUSH_MATCHES_SHOWN
        if is_user:
            apps = sorted(session_apps(user_id=query) | push_apps(user_id=query))
            app = request.GET.get("app") or (apps[0] if len(apps) == 1 else None)
            if app is None and len(apps) > 1:
                # The same id in several apps: several users. Say so, and link each.
                context.update({"user_id": query, "title": f"User {query}",
                                "user_apps": [(a, user_url(query, a)) for a in apps]})
            else:
                context.update(self._user_context(request, query, app or DEFAULT_APP))
        elif not matches:
            context["error"] = (
                f"Not found: no user, push, session or idempotency key is “{query}”. "
                "User ids are case-sensitive; a user is known once it has connected "
                "or been pushed to."
            )
        return TemplateResponse(request, "admin/console/user.html", context)

    def _user_context(self, request: HttpRequest, user_id: str, app: str) -> dict[str, Any]:
        since = alive_since()
        sessions = user_sessions(user_id=user_id, app=app)
        rows = [(s, session_state(s, since=since), close_label(s.close_code)) for s in sessions]
        live = [s for s, state, _ in rows if state == "live"]
        logs = [log for log in pushes_to_user(user_id=user_id, app=app)
                if log.broadcast or user_id in log.users]
        states = recipient_states(user_id=user_id, push_ids=[log.id for log in logs])
        pushes = [push_outcome(log, user_id=user_id, sessions=sessions, state=states.get(log.id))
                  for log in logs]
        user = request.user
        pending = pending_disconnect(user_id=user_id, live=live)
        can_audit = has_view(user, "push_app.view_auditevent")
        return {
            "pending": pending,
            "live_other": len(live) - len(pending.sessions) if pending else 0,
            "can_audit": can_audit,
            "actions": audit_of_user(user_id=user_id) if can_audit else [],
            "actions_shown": USER_ACTIONS_SHOWN,
            "title": f"User {user_id}" + ("" if app == DEFAULT_APP else f" of {app}"),
            "user_id": user_id,
            "user_app": app,
            "sessions": rows,
            "live_sessions": live,
            "live_nodes": sorted({s.node_id for s in live}),
            "last_session": sessions[0] if sessions else None,
            "pushes": pushes,
            "can_disconnect": user.has_perm("sessions_app.disconnect_session"),
            "can_test_push": user.has_perm("push_app.send_test_push"),
        }


class StrictActionsMixin:
    """Answer a known admin action that the user may not run with 403.

    Django's admin hides such actions and, if one is posted anyway, quietly shows the list
    again; an operator's tool should say no out loud, and tests can see it.
    """

    actions: Any

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None
                        ) -> HttpResponse:
        if request.method == "POST" and "action" in request.POST:
            name = request.POST["action"]
            known = {a if isinstance(a, str) else a.__name__ for a in self.actions or ()}
            if name in known and name not in self.get_actions(request):  # type: ignore[attr-defined]
                raise PermissionDenied
        return super().changelist_view(request, extra_context)  # type: ignore[misc]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows the system writes and operators only read (nodes, sessions, the audit trail)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Retention is `manage.py prunegateway`'s job; a deleted live row would lie.
        return False
