"""Admin for API clients and push logs.

Push logs are read-only (they are the record of what happened); an operator with
``push_app.send_test_push`` can send a test push to one user from here. API clients are
created with a key shown once, on the page that answers the creation (never stored in a
message or a cookie), rotated the same way, and deactivated rather than edited.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseBase,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from console.admin_site import StrictActionsMixin, audit_operator, user_url
from console.ids import id_html
from console.pushlogs import CreatedFilter, csv_rows
from console.when import when
from gateway_core import bridge
from gateway_core.tenancy import DEFAULT_APP, SCOPES
from gateway_core.tokens import valid_user_id
from push_app.errors import PushUnavailable
from push_app.models import ApiClient, App, AuditAction, PushLog, PushStatus
from push_app.selectors import (
    Rejections,
    push_recipients,
    recipient_counts,
    rejections_since,
    users_contain_q,
)
from push_app.services import (
    TEST_PUSH_TOPIC,
    api_client_create,
    api_client_rotate,
    api_client_set_active,
    console_test_push,
)
from push_app.tenancy import app_get
from push_app.validation import RequestInvalid
from sessions_app.models import Node
from sessions_app.selectors import alive_since, node_state

TEST_PUSH_PERM = "push_app.send_test_push"
#: The longest pretty-printed payload the push page shows.
PAYLOAD_PREVIEW_CHARS = 20_000
#: How many of a push's target users its page lists.
USERS_SHOWN = 50

#: How many recipients a push's page lists.
RECIPIENTS_SHOWN = 50
_RECIPIENT_TONE = {"acked": "ok", "delivered": "info", "pending": "warn", "offline": "muted",
                   "expired": "bad", "dropped": "bad"}
_STATUS_TONE = {PushStatus.ACCEPTED: "warn", PushStatus.PUBLISHED: "info",
                PushStatus.DELIVERED: "ok", PushStatus.FAILED: "bad"}


def _human_bytes(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


# --- Push logs ------------------------------------------------------------------------------

class TestPushForm(forms.Form):
    user = forms.CharField(max_length=128, help_text="The user id (the token's sub).")
    app = forms.ModelChoiceField(queryset=App.objects.all(), initial=DEFAULT_APP,
                                 to_field_name="id", empty_label=None, required=False,
                                 help_text="The user's app: u1 of another app is another user.")
    topic = forms.CharField(max_length=200, required=False, initial=TEST_PUSH_TOPIC)
    payload = forms.CharField(
        label="Data",
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60, "class": "console-mono"}),
        initial=json.dumps({"message": "Test push from the operator console"}, indent=2),
        help_text="Any JSON; it arrives as the push frame's data.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        app_get(DEFAULT_APP)  # the choices always hold ``default``, even in a flushed database
        super().__init__(*args, **kwargs)

    def clean_user(self) -> str:
        user = self.cleaned_data["user"].strip()
        if not valid_user_id(user):
            raise forms.ValidationError("Not a user id (1-128 of A-Z a-z 0-9 _ . : @ -).")
        return str(user)

    def clean_payload(self) -> Any:
        try:
            return json.loads(self.cleaned_data["payload"])
        except ValueError as exc:
            raise forms.ValidationError(f"Not JSON: {exc}") from exc


@admin.register(PushLog)
class PushLogAdmin(admin.ModelAdmin):
    list_display = ("push_id", "status_badge", "client_name", "app", "targets", "topic",
                    "size", "created_at", "published_at", "delivered", "acked", "error_short")
    list_filter = ("status", "app", "client", CreatedFilter, "broadcast")
    list_display_links = None  # push_id links itself, beside its copy button
    list_select_related = ("client",)
    search_fields = ("=id", "=idempotency_key")
    search_help_text = "A push id, an idempotency key, or a user id (pushes naming that user)."
    list_per_page = 100
    date_hierarchy = None
    fieldsets = (
        (None, {"fields": ("id", "status_badge", "client_name", "accepted_node", "created_at",
                           "published_at", "ttl_s", "expires_at", "error")}),
        ("Delivery", {"fields": ("delivered", "acked", "per_node", "recipients")}),
        ("Targets", {"fields": ("broadcast", "target_count", "user_list")}),
        ("Payload", {"fields": ("topic", "idempotency_key", "size", "payload")}),
    )
    readonly_fields = ("id", "status_badge", "client_name", "accepted_node", "created_at",
                       "published_at", "ttl_s", "expires_at", "error", "delivered", "acked",
                       "per_node", "recipients", "broadcast", "target_count", "user_list",
                       "topic",
                       "idempotency_key", "size", "payload")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # retention is `manage.py prunegateway`'s job

    def has_test_push_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(TEST_PUSH_PERM)

    def get_queryset(self, request: HttpRequest) -> QuerySet[PushLog]:
        return super().get_queryset(request).defer("data_json")

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[PushLog],
                           search_term: str) -> tuple[QuerySet[PushLog], bool]:
        term = search_term.strip()
        found, may_have_duplicates = super().get_search_results(request, queryset, term)
        if valid_user_id(term):
            found = found | queryset.filter(users_contain_q(term))
        return found, may_have_duplicates

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path("test-push/", self.admin_site.admin_view(self.test_push_view),
                 name="{}_{}_test_push".format(*info)),
            path("export.csv", self.admin_site.admin_view(self.export_view),
                 name="{}_{}_export".format(*info)),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None
                        ) -> HttpResponse:
        extra = {"can_test_push": self.has_test_push_permission(request),
                 **(extra_context or {})}
        return super().changelist_view(request, extra_context=extra)

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        """The list as CSV, with the same filters and search (``console.pushlogs``)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        # The changelist's own filtering, so the export is exactly what the list shows.
        try:
            queryset = self.get_changelist_instance(request).get_queryset(request)
        except IncorrectLookupParameters as exc:
            return HttpResponseBadRequest(f"Bad filter: {exc}", content_type="text/plain")
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response = StreamingHttpResponse(csv_rows(queryset), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="push-logs-{stamp}.csv"'
        response["Cache-Control"] = "no-store"
        return response

    # Columns --------------------------------------------------------------------------

    @admin.display(description="push", ordering="id")
    def push_id(self, obj: PushLog) -> str:
        return id_html(obj.id, url=reverse("admin:push_app_pushlog_change", args=[obj.id]))

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: PushLog) -> str:
        return format_html('<span class="console-badge console-{}">{}</span>',
                           _STATUS_TONE.get(PushStatus(obj.status), "muted"), obj.status)

    @admin.display(description="client", ordering="client__name")
    def client_name(self, obj: PushLog) -> str:
        return obj.client.name if obj.client else "console"

    @admin.display(description="targets")
    def targets(self, obj: PushLog) -> str:
        if obj.broadcast:
            return "all (broadcast)"
        shown = obj.users[:3]
        more = f" +{obj.target_count - len(shown)}" if obj.target_count > len(shown) else ""
        return format_html("{}{}", format_html_join(
            ", ", '<a href="{}">{}</a>', ((user_url(u), u) for u in shown)), more)

    @admin.display(description="size", ordering="payload_bytes")
    def size(self, obj: PushLog) -> str:
        return _human_bytes(obj.payload_bytes)

    @admin.display(description="error")
    def error_short(self, obj: PushLog) -> str:
        return format_html('<span title="{}">{}</span>', obj.error,
                           Truncator(obj.error).chars(40)) if obj.error else "-"

    @admin.display(description="per recipient")
    def recipients(self, obj: PushLog) -> str:
        """Did each user get it, and ack it? (PROTOCOL.md section 6; the first
        ``RECIPIENTS_SHOWN`` users, with every state's count.)"""
        if obj.broadcast:
            return "A broadcast is not tracked per recipient."
        counts = recipient_counts(obj)
        if not counts:
            return "-"
        page = push_recipients(log=obj, state=None, cursor=None, page=RECIPIENTS_SHOWN)
        summary = format_html_join(
            " ", '<span class="console-badge console-{}">{} {}</span>',
            ((_RECIPIENT_TONE.get(state, "muted"), n, state)
             for state, n in sorted(counts.items())))
        body = format_html_join("", (
            '<tr><td><a href="{}">{}</a></td><td><span class="console-badge console-{}">{}</span>'
            "</td><td>{}</td><td>{}</td><td>{}</td></tr>"), (
            (user_url(r["user"]), r["user"], _RECIPIENT_TONE.get(r["state"], "muted"),
             r["state"], r["attempts"], r["delivered_at"] or "-", r["acked_at"] or "-")
            for r in page["results"]))
        more = (format_html("<p>First {} users; <span class=\"console-mono\">GET /api/v1/push/"
                            "{}/recipients</span> pages through all.</p>", RECIPIENTS_SHOWN,
                            obj.id) if page["next"] else "")
        return format_html(
            '<p>{}</p><table class="console-table"><thead><tr><th>user</th><th>state</th>'
            "<th>attempts</th><th>delivered</th><th>acked</th></tr></thead><tbody>{}</tbody>"
            "</table>{}", summary, body, more)

    @admin.display(description="per node")
    def per_node(self, obj: PushLog) -> str:
        rows = list(obj.deliveries.order_by("node_id"))
        if not rows:
            return "No node has delivered it (yet)." if obj.status != "failed" else "-"
        since = alive_since()
        nodes = {n.id: n for n in Node.objects.filter(id__in=[r.node_id for r in rows])}

        def health(node_id: str) -> str:
            node = nodes.get(node_id)
            return node_state(node, since=since) if node else "gone"

        body = format_html_join(
            "", '<tr><td><a href="{}">{}</a> <span class="console-badge console-{}">{}</span>'
                "</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (reverse("admin:console_node", args=[r.node_id]), r.node_id,
                 health(r.node_id), health(r.node_id), r.delivered, r.acked,
                 when(r.updated_at))
                for r in rows
            ),
        )
        return format_html(
            '<table class="console-table"><thead><tr><th>node</th><th>delivered</th>'
            "<th>acked</th><th>updated</th></tr></thead><tbody>{}</tbody></table>", body
        )

    @admin.display(description="users")
    def user_list(self, obj: PushLog) -> str:
        if obj.broadcast:
            return "every connected user"
        shown = obj.users[:USERS_SHOWN]
        links = format_html_join(", ", '<a href="{}">{}</a>', ((user_url(u), u) for u in shown))
        rest = len(obj.users) - len(shown)
        return format_html("{}{}", links, f" … and {rest} more" if rest > 0 else "")

    @admin.display(description="data")
    def payload(self, obj: PushLog) -> str:
        try:
            text = json.dumps(json.loads(obj.data_json), indent=2, ensure_ascii=False)
        except ValueError:
            text = obj.data_json
        note = ""
        if len(text) > PAYLOAD_PREVIEW_CHARS:
            note = f"… cut at {PAYLOAD_PREVIEW_CHARS} of {len(text)} characters"
            text = text[:PAYLOAD_PREVIEW_CHARS]
        return format_html('<pre class="console-json">{}</pre><p class="help">{}</p>', text, note)

    # Test push --------------------------------------------------------------------------

    def test_push_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_test_push_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = TestPushForm(request.POST)
            if form.is_valid():
                try:
                    log = console_test_push(
                        user_id=form.cleaned_data["user"], data=form.cleaned_data["payload"],
                        topic=form.cleaned_data["topic"] or None,
                        submit=bridge.submit, backlog=bridge.backlog(),
                        app=form.cleaned_data["app"].pk if form.cleaned_data["app"]
                        else DEFAULT_APP,
                    )
                except (RequestInvalid, PushUnavailable) as exc:
                    form.add_error(None, exc.detail)
                else:
                    audit_operator(request, action=AuditAction.TEST_PUSH,
                                   user_id=form.cleaned_data["user"], target=log.id)
                    self.message_user(request, f"Test push {log.id} sent to "
                                      f"{form.cleaned_data['user']}. Refresh this page to "
                                      "see it delivered and acked.")
                    return HttpResponseRedirect(
                        reverse("admin:push_app_pushlog_change", args=[log.id])
                    )
        else:
            form = TestPushForm(initial={"user": request.GET.get("user", ""),
                                         "app": request.GET.get("app") or DEFAULT_APP})
        context = {
            **self.admin_site.each_context(request),
            "title": "Send a test push", "opts": self.opts, "form": form,
        }
        return TemplateResponse(request, "admin/console/test_push.html", context)


# --- API clients ------------------------------------------------------------------------------

class ApiClientForm(forms.ModelForm):
    """Name, app and scopes (checkboxes, stored comma-separated: ``ApiClient.scopes``)."""

    scope_choices = forms.MultipleChoiceField(
        label="Scopes", choices=[(s, s) for s in SCOPES], initial=list(SCOPES),
        widget=forms.CheckboxSelectMultiple,
        help_text="push: push, batch, status; presence: presence; manage: disconnect, "
                  "tokens, webhooks.")

    class Meta:
        model = ApiClient
        fields = ("name", "app", "is_active")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        app_get(DEFAULT_APP)  # the choices always hold ``default``, even in a flushed database
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.initial["scope_choices"] = list(self.instance.scope_list)

    def save(self, commit: bool = True) -> Any:
        self.instance.scopes = ",".join(s for s in SCOPES if s in self.cleaned_data.get(
            "scope_choices", SCOPES))
        return super().save(commit)

@admin.register(ApiClient)
class ApiClientAdmin(StrictActionsMixin, admin.ModelAdmin):
    list_display = ("name", "app", "scopes", "is_active", "key_prefix", "created_at",
                    "last_used_at", "pushes_24h", "pushes_total")
    list_filter = ("is_active", "app")
    form = ApiClientForm
    search_fields = ("name", "=key_prefix")
    readonly_fields = ("key_prefix", "created_at", "last_used_at", "pushes_24h",
                       "pushes_total", "rejected_1h", "rejected_24h", "last_rejection")
    actions = ["deactivate", "activate"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ("name", "app", "scope_choices")
        return ("name", "app", "scope_choices", "is_active", "key_prefix", "created_at",
                "last_used_at", "pushes_24h", "pushes_total", "rejected_1h", "rejected_24h",
                "last_rejection")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # A key's app is fixed: moving it would hand its pushes' users to another app.
        return (*self.readonly_fields, *(("app",) if obj is not None else ()))

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiClient]:
        day_ago = timezone.now() - timedelta(hours=24)
        return super().get_queryset(request).annotate(
            n_pushes=Count("pushes"),
            n_pushes_24h=Count("pushes", filter=Q(pushes__created_at__gte=day_ago)),
        )

    @admin.display(description="pushes (24 h)", ordering="n_pushes_24h")
    def pushes_24h(self, obj: ApiClient) -> int:
        return int(getattr(obj, "n_pushes_24h", 0))

    @admin.display(description="pushes (kept)", ordering="n_pushes")
    def pushes_total(self, obj: ApiClient) -> str:
        n = int(getattr(obj, "n_pushes", 0))
        url = reverse("admin:push_app_pushlog_changelist") + f"?client__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, n)

    def _rejections(self, obj: ApiClient, hours: int) -> Rejections | None:
        found = rejections_since(since=timezone.now() - timedelta(hours=hours),
                                 client_id=obj.pk, one_client=True)
        return found[0] if found else None

    def _rejected(self, obj: ApiClient, hours: int) -> str:
        found = self._rejections(obj, hours)
        if found is None:
            return "0"
        parts = ", ".join(f"{label}: {n}" for label, n in found.by_status.items() if n)
        return format_html('<span class="console-tone-bad">{}</span> ({})', found.total, parts)

    @admin.display(description="rejected requests (1 h)")
    def rejected_1h(self, obj: ApiClient) -> str:
        return self._rejected(obj, 1)

    @admin.display(description="rejected requests (24 h)")
    def rejected_24h(self, obj: ApiClient) -> str:
        return self._rejected(obj, 24)

    @admin.display(description="last rejected request (24 h)")
    def last_rejection(self, obj: ApiClient) -> str:
        found = self._rejections(obj, 24)
        if found is None or found.last_error_at is None:
            return "none"
        return format_html("{} {}: {} <small>at {}</small>", found.last_status,
                           found.last_code, found.last_detail, when(found.last_error_at))

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path("<int:pk>/rotate/", self.admin_site.admin_view(self.rotate_view),
                 name="{}_{}_rotate".format(*info)),
            *super().get_urls(),
        ]

    # Create: the key is shown on the answer to the form, once -------------------------

    def save_model(self, request: HttpRequest, obj: ApiClient, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        client, key = api_client_create(name=obj.name, app=str(obj.app_id),
                                        scopes=tuple(form.cleaned_data["scope_choices"]))
        audit_operator(request, action=AuditAction.KEY_CREATE, target=client.name)
        for field in ("pk", "key_prefix", "key_hash", "is_active", "created_at", "scopes"):
            setattr(obj, field, getattr(client, field))
        obj._new_key = key  # type: ignore[attr-defined]  # read by response_add only

    def response_add(self, request: HttpRequest, obj: ApiClient,
                     post_url_continue: str | None = None) -> HttpResponse:
        key = getattr(obj, "_new_key", None)
        if key is None:  # pragma: no cover - save_model always sets it
            return super().response_add(request, obj, post_url_continue)
        return self._key_page(request, obj, key, created=True)

    def _key_page(self, request: HttpRequest, client: ApiClient, key: str, *,
                  created: bool) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": f"API key for {client.name}", "opts": self.opts, "client": client,
            "key": key, "created": created, "origin": request.build_absolute_uri("/")[:-1],
        }
        response = TemplateResponse(request, "admin/console/key_shown.html", context)
        response["Cache-Control"] = "no-store"
        return response

    # Rotate ---------------------------------------------------------------------------

    def rotate_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        client = get_object_or_404(ApiClient, pk=pk)
        if not self.has_change_permission(request, client):
            raise PermissionDenied
        if request.method == "POST":
            key = api_client_rotate(client=client)
            audit_operator(request, action=AuditAction.KEY_ROTATE, target=client.name)
            self.log_change(request, client, "Rotated the API key; the old key stopped working.")
            return self._key_page(request, client, key, created=False)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Rotate the key of {client.name}?", "opts": self.opts,
            "client": client, "original": client,
        }
        return TemplateResponse(request, "admin/console/rotate_confirm.html", context)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra = {"can_rotate": self.has_change_permission(request), **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context=extra)

    # Actions --------------------------------------------------------------------------

    @admin.action(description="Deactivate selected clients (their keys get 403)",
                  permissions=["change"])
    def deactivate(self, request: HttpRequest, queryset: QuerySet[ApiClient]) -> None:
        clients = list(queryset)
        n = api_client_set_active(clients=clients, active=False)
        for client in clients:
            audit_operator(request, action=AuditAction.KEY_DEACTIVATE, target=client.name)
        self.message_user(request, f"Deactivated {n} client(s).", messages.WARNING)

    @admin.action(description="Activate selected clients", permissions=["change"])
    def activate(self, request: HttpRequest, queryset: QuerySet[ApiClient]) -> None:
        clients = list(queryset)
        n = api_client_set_active(clients=clients, active=True)
        for client in clients:
            audit_operator(request, action=AuditAction.KEY_ACTIVATE, target=client.name)
        self.message_user(request, f"Activated {n} client(s).")
