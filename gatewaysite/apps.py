"""Django's admin app, with the operator console as its default site."""

from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class ConsoleAdminConfig(AdminConfig):
    default_site = "gatewaysite.admin_site.ConsoleAdminSite"
