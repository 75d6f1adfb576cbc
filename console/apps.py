"""The console app, and Django's admin app with the operator console as its default site."""

from __future__ import annotations

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class ConsoleConfig(AppConfig):
    name = "console"
    verbose_name = "Operator console"
    default = True


class ConsoleAdminConfig(admin_apps.AdminConfig):
    """``django.contrib.admin`` (label ``admin``), whose site is the console's."""

    default = False
    default_site = "console.admin_site.ConsoleAdminSite"
