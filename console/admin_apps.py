"""Admin for apps (PROTOCOL.md section 9): each app with its keys, limits and live load,
its creation (the client-token secret shown once), and secret rotation.

An app's id is its ``kid``, its metrics label and its users' namespace: it is chosen once
and never edited. ``default`` signs with ``GATEWAY_JWT_SECRET``, so it has no secret here.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from console.admin_site import audit_operator
from gateway_core.tenancy import DEFAULT_APP, valid_app_id
from push_app.models import ApiClient, App, AuditAction
from push_app.tenancy import AppInvalid, app_create, app_drop_previous, app_rotate
from sessions_app.selectors import app_loads


class AppForm(forms.ModelForm):
    class Meta:
        model = App
        fields = ("id", "name", "max_connections", "pushes_per_second")

    def clean_id(self) -> str:
        app_id = str(self.cleaned_data["id"]).strip()
        if not valid_app_id(app_id):
            raise forms.ValidationError(
                "1-64 of a-z 0-9 _ -, starting with a letter or digit (it is the tokens' kid "
                "and the metrics label).")
        return app_id


class ApiClientInline(admin.TabularInline):
    model = ApiClient
    fields = ("client_link", "scopes", "is_active", "last_used_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    verbose_name = "API key"
    verbose_name_plural = "API keys"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="client")
    def client_link(self, obj: ApiClient) -> str:
        url = reverse("admin:push_app_apiclient_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.name)


@admin.register(App)
class AppAdmin(admin.ModelAdmin):
    form = AppForm
    list_display = ("id", "name", "keys", "connections_now", "max_connections",
                    "pushes_per_second", "rotation", "created_at")
    search_fields = ("=id", "name")
    inlines = [ApiClientInline]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ("id", "name", "max_connections", "pushes_per_second")
        return ("id", "name", "max_connections", "pushes_per_second", "connections_now",
                "rotation", "created_at")

    def get_inline_instances(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        # The keys are listed on an app's page; a new app has none (and its add form posts
        # no inline data).
        return [] if obj is None else super().get_inline_instances(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return ("id", "connections_now", "rotation", "created_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[App]:
        return super().get_queryset(request).annotate(n_keys=Count("api_clients"))

    def changelist_view(self, request: HttpRequest,
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # One read of the nodes' beats for the whole page (``connections_now``).
        self._loads = app_loads(exclude="")
        return super().changelist_view(request, extra_context)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # An app's pushes and sessions keep its id: deleting it would only orphan them.
        return False

    @admin.display(description="API keys", ordering="n_keys")
    def keys(self, obj: App) -> str:
        url = reverse("admin:push_app_apiclient_changelist") + f"?app__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, getattr(obj, "n_keys", 0))

    @admin.display(description="connections now")
    def connections_now(self, obj: App) -> str:
        loads = getattr(self, "_loads", None)
        if loads is None:
            loads = app_loads(exclude="")
        load = loads.get(obj.pk)
        count = load.connections if load else 0
        url = reverse("admin:sessions_app_sessionrecord_changelist") + f"?app={obj.pk}"
        return format_html('<a href="{}">{}</a> <small>(at the nodes\' last beat)</small>',
                           url, count)

    @admin.display(description="secret")
    def rotation(self, obj: App) -> str:
        if obj.pk == DEFAULT_APP:
            return "GATEWAY_JWT_SECRET (rotate it in every node's environment)"
        if obj.previous_secret:
            return "rotating: current and previous secret accepted"
        return "one secret"

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path("<str:pk>/secret/", self.admin_site.admin_view(self.secret_view),
                 name="{}_{}_secret".format(*info)),
            *super().get_urls(),
        ]

    # Create: the secret is shown on the answer to the form, once --------------------------

    def save_model(self, request: HttpRequest, obj: App, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        try:
            app, secret = app_create(app_id=obj.pk, name=obj.name,
                                     max_connections=obj.max_connections,
                                     pushes_per_second=obj.pushes_per_second)
        except AppInvalid as exc:  # a race with another operator: the id was taken
            raise PermissionDenied(str(exc)) from exc
        audit_operator(request, action=AuditAction.APP_CREATE, target=app.pk)
        obj.created_at = app.created_at
        obj._new_secret = secret  # type: ignore[attr-defined]  # read by response_add only

    def response_add(self, request: HttpRequest, obj: App,
                     post_url_continue: str | None = None) -> HttpResponse:
        secret = getattr(obj, "_new_secret", None)
        if secret is None:  # pragma: no cover - save_model always sets it
            return super().response_add(request, obj, post_url_continue)
        return self._secret_page(request, obj, secret, created=True)

    def _secret_page(self, request: HttpRequest, app: App, secret: str, *,
                     created: bool) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": f"Client-token secret of {app.pk}", "opts": self.opts, "app": app,
            "secret": secret, "created": created,
        }
        response = TemplateResponse(request, "admin/console/app_secret_shown.html", context)
        response["Cache-Control"] = "no-store"
        return response

    # Rotate, drop the previous secret ------------------------------------------------------

    def secret_view(self, request: HttpRequest, pk: str) -> HttpResponse:
        app = get_object_or_404(App, pk=pk)
        if not self.has_change_permission(request, app) or app.pk == DEFAULT_APP:
            raise PermissionDenied
        if request.method == "POST":
            if request.POST.get("do") == "drop":
                if app_drop_previous(app=app):
                    audit_operator(request, action=AuditAction.APP_DROP_PREVIOUS, target=app.pk)
                    self.log_change(request, app, "Dropped the previous client-token secret.")
                    self.message_user(request, "The previous secret is no longer accepted: "
                                      "tokens signed with it get 4001 from the nodes' next beat.",
                                      messages.WARNING)
                return HttpResponseRedirect(reverse("admin:push_app_app_change", args=[app.pk]))
            secret = app_rotate(app=app)
            audit_operator(request, action=AuditAction.APP_ROTATE, target=app.pk)
            self.log_change(request, app, "Rotated the client-token secret (previous kept).")
            return self._secret_page(request, app, secret, created=False)
        context = {**self.admin_site.each_context(request),
                   "title": f"Client-token secret of {app.pk}", "opts": self.opts,
                   "app": app, "original": app}
        return TemplateResponse(request, "admin/console/app_secret_confirm.html", context)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra = {"can_rotate": self.has_change_permission(request) and object_id != DEFAULT_APP,
                 **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context=extra)
