"""Admin for nodes and sessions.

These rows mirror live state that the nodes write, so nobody edits them here: the one
thing an operator does to a session is disconnect it (close 4010, through the broker to the
node that holds it), which needs ``sessions_app.disconnect_session``. Lists select their
nodes with the sessions, so health and state cost no query per row.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator

from console.admin_site import ReadOnlyAdmin, StrictActionsMixin, audit_operator, user_url
from console.when import when
from gateway_core import bridge
from gateway_core.tenancy import DEFAULT_APP, valid_app_id
from gateway_core.tokens import valid_user_id
from push_app.models import AuditAction
from sessions_app.models import Node, SessionRecord
from sessions_app.selectors import (
    ago,
    alive_since,
    close_label,
    node_state,
    session_state,
    session_state_q,
)
from sessions_app.services import (
    MAX_REASON_CHARS,
    console_sessions_disconnect,
    console_user_disconnect,
)

DISCONNECT_PERM = "sessions_app.disconnect_session"

_BADGE = '<span class="console-badge console-{}">{}</span>'


def badge(state: str, text: str | None = None) -> str:
    return format_html(_BADGE, state, text or state)


def sessions_url(**params: str) -> str:
    return reverse("admin:sessions_app_sessionrecord_changelist") + "?" + urlencode(params)


def _actor_id(request: HttpRequest) -> int:
    pk = request.user.pk
    assert pk is not None, "admin views only let signed-in staff through"
    return int(pk)


# --- Nodes --------------------------------------------------------------------------------

@admin.register(Node)
class NodeAdmin(ReadOnlyAdmin):
    list_display = ("node_link", "health", "address", "broker", "routing_summary", "last_seen",
                    "seen_ago", "connections", "users", "started_at", "sessions_link")
    list_display_links = None  # the id opens the node's page (console/node/<id>/)
    search_fields = ("id", "address")
    fields = ("node_link", "health", "address", "broker", "routing_summary", "started_at",
              "last_seen", "stopped_at", "connections", "users", "sessions_link")
    readonly_fields = fields

    @admin.display(description="node", ordering="id")
    def node_link(self, obj: Node) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:console_node", args=[obj.id]),
                           obj.id)

    @admin.display(description="health")
    def health(self, obj: Node) -> str:
        return badge(node_state(obj, since=alive_since()))

    @admin.display(description="routing")
    def routing_summary(self, obj: Node) -> str:
        """Mode, pushes read and how many of them were not held here (the waste routing
        removes), and the map's size: the node page has the rest."""
        r = obj.routing or {}
        if not r:
            return "broadcast (no REDIS_URL)"
        return (f"{r.get('mode', '?')}: read {r.get('read', 0)}, not held "
                f"{r.get('not_held', 0)}; map {r.get('map_connections', 0)}")

    @admin.display(description="seen")
    def seen_ago(self, obj: Node) -> str:
        return ago((timezone.now() - obj.last_seen).total_seconds())

    @admin.display(description="sessions")
    def sessions_link(self, obj: Node) -> str:
        return format_html(
            '<a href="{}">live sessions</a> · <a href="{}">all</a>',
            sessions_url(node__id__exact=obj.id), sessions_url(node__id__exact=obj.id,
                                                               state="all"),
        )


# --- Sessions -------------------------------------------------------------------------------

class StateFilter(admin.SimpleListFilter):
    """Live by default: open and on a node that still beats (never a stale session)."""

    title = "state"
    parameter_name = "state"
    default = "live"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("live", "Live"), ("stale", "Open on a dead node"), ("closed", "Closed"),
                ("all", "All")]

    def value(self) -> str:
        return super().value() or self.default

    def choices(self, changelist: Any) -> Any:
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        for state in ("live", "stale", "closed"):
            if value == state:
                return queryset.filter(session_state_q(state, since=alive_since()))
        return queryset


class AgeFilter(admin.SimpleListFilter):
    title = "connected"
    parameter_name = "age"
    _ages = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1), "1d": timedelta(days=1)}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("5m", "In the last 5 minutes"), ("1h", "In the last hour"),
                ("1d", "In the last 24 hours"), ("older", "More than 24 hours ago")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        now = timezone.now()
        if value in self._ages:
            return queryset.filter(connected_at__gte=now - self._ages[value])
        if value == "older":
            return queryset.filter(connected_at__lt=now - timedelta(days=1))
        return queryset


class DisconnectForm(forms.Form):
    reason = forms.CharField(
        max_length=MAX_REASON_CHARS, required=False,
        widget=forms.TextInput(attrs={"size": 60, "placeholder": "e.g. support ticket 1234"}),
        help_text="Kept in the audit trail, the admin history and the node's log; the client "
                  "only sees 4010.",
    )


class UserDisconnectForm(DisconnectForm):
    user = forms.CharField(max_length=128)
    # The user's app (PROTOCOL.md section 9): ``u1`` of another app is another user.
    app = forms.CharField(max_length=64, required=False, initial=DEFAULT_APP,
                          widget=forms.HiddenInput)

    def clean_app(self) -> str:
        app = self.cleaned_data.get("app") or DEFAULT_APP
        if not valid_app_id(app):
            raise forms.ValidationError("Not an app id.")
        return str(app)

    def clean_user(self) -> str:
        user = self.cleaned_data["user"].strip()
        if not valid_user_id(user):
            raise forms.ValidationError("Not a user id (1-128 of A-Z a-z 0-9 _ . : @ -).")
        return str(user)


_TITLES = {"live": "Live sessions", "stale": "Sessions still open on dead nodes",
           "closed": "Closed sessions", "all": "All sessions"}


@admin.register(SessionRecord)
class SessionRecordAdmin(StrictActionsMixin, ReadOnlyAdmin):
    list_display = ("user_link", "app", "node_link", "state", "connected", "beat",
                    "remote_addr", "agent", "token_meta", "closed")
    list_display_links = None
    list_filter = (StateFilter, "app", "node", AgeFilter)
    list_select_related = ("node",)
    search_fields = ("=user_id", "=id", "remote_addr")
    search_help_text = "Exact user id or session id, or part of a remote address."
    ordering = ("-connected_at",)
    list_per_page = 100
    actions = ["disconnect_sessions", "disconnect_users"]
    fields = ("id", "user_link", "node_link", "state", "connected_at", "last_seen",
              "closed_at", "closed", "remote_addr", "user_agent", "meta")
    readonly_fields = fields

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path("disconnect-user/", self.admin_site.admin_view(self.disconnect_user_view),
                 name="{}_{}_disconnect_user".format(*info)),
            *super().get_urls(),
        ]

    def has_disconnect_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(DISCONNECT_PERM)

    # Columns --------------------------------------------------------------------------

    @admin.display(description="user", ordering="user_id")
    def user_link(self, obj: SessionRecord) -> str:
        return format_html('<a href="{}">{}</a>', user_url(obj.user_id), obj.user_id)

    @admin.display(description="node", ordering="node_id")
    def node_link(self, obj: SessionRecord) -> str:
        return format_html('<a href="{}">{}</a>',
                           reverse("admin:console_node", args=[obj.node_id]),
                           obj.node_id)

    @admin.display(description="state")
    def state(self, obj: SessionRecord) -> str:
        return badge(session_state(obj, since=alive_since()))

    @admin.display(description="connected since", ordering="connected_at")
    def connected(self, obj: SessionRecord) -> str:
        return format_html('<span class="nowrap" title="{}">{}</span>',
                           obj.connected_at.isoformat(), when(obj.connected_at))

    @admin.display(description="last heartbeat", ordering="last_seen")
    def beat(self, obj: SessionRecord) -> str:
        # Nodes rewrite a live session's last_seen every 30 s or so, not on every ping.
        return format_html('<span class="nowrap" title="{} (recorded every ~30 s)">{}</span>',
                           obj.last_seen.isoformat(),
                           ago((timezone.now() - obj.last_seen).total_seconds()))

    @admin.display(description="user agent")
    def agent(self, obj: SessionRecord) -> str:
        return format_html('<span title="{}">{}</span>', obj.user_agent,
                           Truncator(obj.user_agent).chars(40))

    @admin.display(description="token meta")
    def token_meta(self, obj: SessionRecord) -> str:
        if not obj.meta:
            return "-"
        text = ", ".join(f"{k}={v}" for k, v in obj.meta.items())
        return format_html('<span title="{}">{}</span>', text, Truncator(text).chars(40))

    @admin.display(description="closed", ordering="closed_at")
    def closed(self, obj: SessionRecord) -> str:
        if obj.closed_at is None:
            return "-"
        return format_html('<span title="{}">{}</span><div class="console-quiet">{}</div>',
                           obj.closed_at.isoformat(), when(obj.closed_at),
                           close_label(obj.close_code))

    # Actions --------------------------------------------------------------------------

    @admin.action(description="Disconnect selected sessions (4010)…",
                  permissions=["disconnect"])
    def disconnect_sessions(self, request: HttpRequest, queryset: QuerySet[SessionRecord]
                            ) -> HttpResponse | None:
        return self._disconnect(request, queryset, by_user=False)

    @admin.action(description="Disconnect every session of the selected sessions' users…",
                  permissions=["disconnect"])
    def disconnect_users(self, request: HttpRequest, queryset: QuerySet[SessionRecord]
                         ) -> HttpResponse | None:
        return self._disconnect(request, queryset, by_user=True)

    def _disconnect(self, request: HttpRequest, queryset: QuerySet[SessionRecord], *,
                    by_user: bool) -> HttpResponse | None:
        if not self.has_disconnect_permission(request):
            raise PermissionDenied
        records = list(queryset.select_related("node"))
        form = DisconnectForm(request.POST if "confirm" in request.POST else None)
        if form.is_bound and form.is_valid():
            reason = form.cleaned_data["reason"]
            actor = _actor_id(request)
            if by_user:
                # A user is an app's: ``u1`` of two apps is two disconnect orders.
                app_users = sorted({(r.app, r.user_id) for r in records})
                users = [user_id for _, user_id in app_users]
                for app, user_id in app_users:
                    user_order = console_user_disconnect(user_id=user_id, reason=reason,
                                                         actor_id=actor, submit=bridge.submit,
                                                         app=app)
                    audit_operator(request, action=AuditAction.USER_DISCONNECT,
                                   user_id=user_id, order_id=user_order.id, reason=reason)
                self.message_user(request, f"Disconnect ordered for {len(users)} user(s): "
                                  f"{', '.join(users[:10])}{'…' if len(users) > 10 else ''}.")
                return None
            order = console_sessions_disconnect(
                session_ids=[r.id for r in records], reason=reason, actor_id=actor,
                submit=bridge.submit,
            )
            if order is not None:
                ordered = set(order.session_ids)
                for user_id in sorted({r.user_id for r in records if r.id in ordered}):
                    audit_operator(
                        request, action=AuditAction.SESSIONS_DISCONNECT, user_id=user_id,
                        target=" ".join(r.id for r in records
                                        if r.id in ordered and r.user_id == user_id),
                        order_id=order.id, reason=reason)
            if order is None:
                self.message_user(request, "None of the selected sessions is open; nothing "
                                  "to disconnect.", messages.WARNING)
            else:
                self.message_user(request, f"Disconnect ordered for {len(order.session_ids)} "
                                  "session(s); their nodes close them with 4010.")
            return None
        since = alive_since()
        rows = [(r, session_state(r, since=since)) for r in records]
        context = {
            **self.admin_site.each_context(request),
            "title": "Disconnect users" if by_user else "Disconnect sessions",
            "opts": self.opts,
            "form": form,
            "rows": rows,
            "by_user": by_user,
            "users": sorted({r.user_id for r in records}),
            "not_open": sum(1 for _, state in rows if state != "live"),
            "action": request.POST.get("action", ""),
            "selected": [r.pk for r in records],
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/console/disconnect.html", context)

    def disconnect_user_view(self, request: HttpRequest) -> HttpResponse:
        """Every connection of one user, including any not recorded yet."""
        if not self.has_disconnect_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = UserDisconnectForm(request.POST)
            if form.is_valid():
                user_id = form.cleaned_data["user"]
                app = form.cleaned_data["app"]
                reason = form.cleaned_data["reason"]
                order = console_user_disconnect(user_id=user_id, reason=reason, app=app,
                                                actor_id=_actor_id(request),
                                                submit=bridge.submit)
                audit_operator(request, action=AuditAction.USER_DISCONNECT, user_id=user_id,
                               order_id=order.id, reason=reason)
                self.message_user(request, f"Disconnect ordered for every connection of "
                                  f"{user_id}; their nodes close them with 4010.")
                return HttpResponseRedirect(user_url(user_id, app))
        else:
            form = UserDisconnectForm(initial={"user": request.GET.get("user", ""),
                                               "app": request.GET.get("app") or DEFAULT_APP})
        user_id = str(form["user"].value() or "")
        app = str(form["app"].value() or DEFAULT_APP)
        since = alive_since()
        open_records = (
            SessionRecord.objects.filter(app=app, user_id=user_id, closed_at__isnull=True)
            .select_related("node") if user_id else SessionRecord.objects.none()
        )
        rows = [(r, session_state(r, since=since)) for r in open_records]
        context = {
            **self.admin_site.each_context(request),
            "title": f"Disconnect {user_id}" if user_id else "Disconnect a user",
            "opts": self.opts, "form": form, "rows": rows, "by_user": True,
            "users": [user_id] if user_id else [], "standalone": True,
            "not_open": sum(1 for _, state in rows if state != "live"),
        }
        return TemplateResponse(request, "admin/console/disconnect.html", context)

    def get_list_display(self, request: HttpRequest) -> Any:
        columns = super().get_list_display(request)
        if request.GET.get(StateFilter.parameter_name, StateFilter.default) == "live":
            return [c for c in columns if c != "closed"]  # always empty there
        return columns

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None
                        ) -> HttpResponse:
        state = request.GET.get(StateFilter.parameter_name, StateFilter.default)
        extra = {"can_disconnect": self.has_disconnect_permission(request),
                 "title": _TITLES.get(state, "Sessions"), **(extra_context or {})}
        return super().changelist_view(request, extra_context=extra)
