"""Admin for webhooks (PROTOCOL.md section 7): endpoints per API client (the signing secret
shown once, on the page that answers the creation), and each delivery with its attempts,
last status and the start of the last answer, with a redeliver action. App column and
filter on both."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from console.admin_site import ReadOnlyAdmin, StrictActionsMixin
from console.when import when
from webhooks import services
from webhooks.addresses import AddressRefused, check_url
from webhooks.models import EVENT_TYPES, Delivery, DeliveryState, Endpoint


class EndpointForm(forms.ModelForm):
    # A plain field: the URL is checked by the API's own rules (``check_url``), not
    # Django's URL validator with its assumed scheme.
    url = forms.CharField(max_length=2000, label="URL")
    event_choices = forms.MultipleChoiceField(
        label="events", choices=[(e, e) for e in EVENT_TYPES],
        widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = Endpoint
        fields = ("client", "url")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["event_choices"] = list(self.instance.events)

    def clean_url(self) -> str:
        url = str(self.cleaned_data["url"])
        try:
            check_url(url)
        except AddressRefused as exc:
            raise forms.ValidationError(str(exc)) from None
        return url


@admin.register(Endpoint)
class EndpointAdmin(StrictActionsMixin, admin.ModelAdmin):
    form = EndpointForm
    list_display = ("url", "client", "app", "event_list", "health", "last_success_at",
                    "last_failure_at", "pending", "created_at")
    list_filter = ("app", "client")
    search_fields = ("url", "client__name", "=id")
    readonly_fields = ("id", "app", "created_at", "last_success_at", "last_failure_at",
                       "failing_since", "deliveries_link")
    list_select_related = ("client",)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ("client", "url", "event_choices")
        return ("id", "client", "app", "url", "event_choices", "created_at",
                "last_success_at", "last_failure_at", "failing_since", "deliveries_link")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # An endpoint belongs to its client for good: its secret and events are the client's.
        return (*self.readonly_fields, *(("client",) if obj is not None else ()))

    @admin.display(description="events")
    def event_list(self, obj: Endpoint) -> str:
        return ", ".join(obj.events)

    @admin.display(description="health")
    def health(self, obj: Endpoint) -> str:
        if obj.failing_since is not None:
            return format_html('<span class="console-tone-bad">failing since {}</span>',
                               when(obj.failing_since))
        return "ok" if obj.last_success_at else "no call yet"

    @admin.display(description="pending")
    def pending(self, obj: Endpoint) -> int:
        return obj.deliveries.filter(state=DeliveryState.PENDING).count()

    @admin.display(description="deliveries")
    def deliveries_link(self, obj: Endpoint) -> str:
        url = reverse("admin:webhooks_delivery_changelist") + f"?endpoint__id__exact={obj.pk}"
        return format_html('<a href="{}">{} deliveries</a>', url, obj.deliveries.count())

    def save_model(self, request: HttpRequest, obj: Endpoint, form: Any, change: bool) -> None:
        events = tuple(form.cleaned_data["event_choices"])
        if change:
            obj.events = list(events)
            super().save_model(request, obj, form, change)
            return
        created = services.endpoint_create(
            client=form.cleaned_data["client"],
            req=services.EndpointRequest(url=obj.url, events=events))
        for field in ("id", "app", "events", "secret", "created_at"):
            setattr(obj, field, getattr(created, field))

    def response_add(self, request: HttpRequest, obj: Endpoint,
                     post_url_continue: str | None = None) -> HttpResponse:
        context = {**self.admin_site.each_context(request), "title": "Webhook endpoint created",
                   "opts": self.opts, "endpoint": obj}
        response = TemplateResponse(request, "admin/console/webhook_secret.html", context)
        response["Cache-Control"] = "no-store"
        return response


@admin.register(Delivery)
class DeliveryAdmin(StrictActionsMixin, ReadOnlyAdmin):
    list_display = ("event_link", "event_type", "endpoint_url", "client", "app", "state",
                    "attempts", "last_status", "excerpt", "last_attempt_at", "next_attempt_at",
                    "created_at")
    list_filter = ("state", "app", "endpoint__client", "event__type")
    search_fields = ("=event__id", "endpoint__url")
    list_select_related = ("event", "endpoint", "endpoint__client")
    readonly_fields = ("event_link", "event_type", "endpoint_url", "client", "app", "state",
                       "attempts", "last_status", "last_response", "last_attempt_at",
                       "next_attempt_at", "delivered_at", "created_at", "lease_node",
                       "lease_until", "body")
    fields = readonly_fields
    actions = ["redeliver"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The action changes rows; the form stays read-only (every field is).
        return super(ReadOnlyAdmin, self).has_change_permission(request, obj)

    @admin.display(description="event")
    def event_link(self, obj: Delivery) -> str:
        return obj.event_id

    @admin.display(description="type", ordering="event__type")
    def event_type(self, obj: Delivery) -> str:
        return obj.event.type

    @admin.display(description="endpoint")
    def endpoint_url(self, obj: Delivery) -> str:
        url = reverse("admin:webhooks_endpoint_change", args=[obj.endpoint_id])
        return format_html('<a href="{}">{}</a>', url, obj.endpoint.url)

    @admin.display(description="API client")
    def client(self, obj: Delivery) -> str:
        return obj.endpoint.client.name

    @admin.display(description="last answer")
    def excerpt(self, obj: Delivery) -> str:
        text = obj.last_response
        return text if len(text) <= 80 else text[:79] + "…"

    @admin.display(description="body")
    def body(self, obj: Delivery) -> str:
        return format_html('<pre class="console-json">{}</pre>',
                           json.dumps(json.loads(obj.event.body), indent=2))

    @admin.action(description="Redeliver the selected deliveries", permissions=["change"])
    def redeliver(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        n = services.deliveries_redeliver(queryset.values_list("id", flat=True))
        self.message_user(request, f"{n} delivery(ies) will be sent again now.",
                          messages.SUCCESS)
