"""``manage.py createapikey <name> [--app ID] [--scopes push,presence,manage]``: prints a new
API key on stdout, and nothing else (which database it went to goes to stderr)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway_core import banner
from gateway_core.tenancy import ALL_SCOPES, DEFAULT_APP, parse_scopes
from push_app.models import ApiClient, App
from push_app.services import api_client_create


class Command(BaseCommand):
    help = "Create an API client of an app and print its key (shown once; stored hashed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--app", default=DEFAULT_APP,
                            help=f"the app the key belongs to (default: {DEFAULT_APP})")
        parser.add_argument("--scopes", default=ALL_SCOPES,
                            help=f"comma-separated, of {ALL_SCOPES} (default: all)")

    def handle(self, *args: Any, name: str, app: str, scopes: str, **options: Any) -> None:
        self.stderr.write(banner.describe_database_line())
        name = name.strip()
        if not name or len(name) > 100:
            raise CommandError("name must be 1-100 characters")
        if ApiClient.objects.filter(name=name).exists():
            raise CommandError(f"an API client named {name!r} exists; rotate its key in admin")
        try:
            wanted = parse_scopes(scopes)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not App.objects.filter(pk=app).exists():
            raise CommandError(f"no app {app!r}; create it with: manage.py createapp {app}")
        _, key = api_client_create(name=name, app=app, scopes=wanted)
        self.stdout.write(key)
