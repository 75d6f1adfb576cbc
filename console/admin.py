"""Registers the console's ModelAdmins (found by the admin's autodiscovery)."""

from console import admin_apps, admin_audit, admin_push, admin_sessions, admin_webhooks

__all__ = ["admin_apps", "admin_audit", "admin_push", "admin_sessions", "admin_webhooks"]
