"""Admin for nodes and sessions: read-only, since these rows mirror live state."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from sessions_app.models import Node, SessionRecord


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Node)
class NodeAdmin(ReadOnlyAdmin):
    list_display = ("id", "address", "broker", "started_at", "last_seen", "stopped_at",
                    "connections", "users")


@admin.register(SessionRecord)
class SessionRecordAdmin(ReadOnlyAdmin):
    list_display = ("id", "user_id", "node", "connected_at", "last_seen", "closed_at",
                    "close_code", "remote_addr")
    list_filter = ("node", ("closed_at", admin.EmptyFieldListFilter))
    search_fields = ("user_id", "id")
