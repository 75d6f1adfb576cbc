"""The audit feed: what operators and API clients did, newest first (``AuditEvent``).

Read-only: the records are written by the actions themselves (the console's and the REST
API's disconnect), never edited. Paged by the admin's changelist; filters by action, kind
of actor and actor; search by exact actor or user id.
"""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html
from django.utils.text import Truncator

from console.admin_site import ReadOnlyAdmin, user_url
from push_app.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "actor_kind", "actor", "action", "user_link", "target_short",
                    "reason")
    list_filter = ("action", "actor_kind", "actor")
    search_fields = ("=actor", "=user_id", "=order_id")
    list_per_page = 50
    ordering = ("-at", "-id")
    date_hierarchy = None
    show_full_result_count = False

    @admin.display(description="user", ordering="user_id")
    def user_link(self, obj: AuditEvent) -> str:
        if not obj.user_id:
            return "-"
        return format_html('<a href="{}">{}</a>', user_url(obj.user_id), obj.user_id)

    @admin.display(description="target")
    def target_short(self, obj: AuditEvent) -> str:
        text = " ".join(t for t in (obj.target, obj.order_id and f"order {obj.order_id}") if t)
        return str(Truncator(text).chars(80)) or "-"
