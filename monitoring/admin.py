"""Admin for alerts: a read-only record of what fired, when, and who was told."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from monitoring.models import Alert, AlertNotification


class AlertNotificationInline(admin.TabularInline):
    model = AlertNotification
    extra = 0
    can_delete = False
    fields = ("kind", "channel", "sent_at", "attempts", "error")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ("rule", "subject", "severity", "is_firing", "fired_at", "resolved_at",
                    "value", "summary")
    list_filter = ("rule", "severity", ("resolved_at", admin.EmptyFieldListFilter))
    search_fields = ("rule", "subject", "summary")
    date_hierarchy = "fired_at"
    readonly_fields = [f.name for f in Alert._meta.fields]
    inlines = [AlertNotificationInline]

    @admin.display(boolean=True, description="firing")
    def is_firing(self, obj: Alert) -> bool:
        return obj.firing

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
