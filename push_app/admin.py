"""Admin for API clients and push logs (a first, plain version)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest

from push_app.models import ApiClient, PushLog
from push_app.services import api_client_create


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    list_display = ("name", "is_active", "key_prefix", "created_at", "last_used_at")
    list_filter = ("is_active",)
    search_fields = ("name",)
    fields = ("name", "is_active", "key_prefix", "created_at", "last_used_at")
    readonly_fields = ("key_prefix", "created_at", "last_used_at")

    def save_model(self, request: HttpRequest, obj: ApiClient, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        client, key = api_client_create(name=obj.name)
        obj.pk = client.pk
        obj.key_prefix = client.key_prefix
        messages.warning(request, f"API key for {client.name} (shown once): {key}")


@admin.register(PushLog)
class PushLogAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "client", "target_count", "broadcast", "topic",
                    "payload_bytes", "created_at", "published_at", "delivered", "acked")
    list_filter = ("status", "client", "broadcast")
    search_fields = ("id", "idempotency_key")
    readonly_fields = [f.name for f in PushLog._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
