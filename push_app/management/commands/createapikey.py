"""``manage.py createapikey <name>``: prints a new API key on stdout, and nothing else (which
database it went to goes to stderr)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway_core import banner
from push_app.models import ApiClient
from push_app.services import api_client_create


class Command(BaseCommand):
    help = "Create an API client and print its key (shown once; stored hashed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")

    def handle(self, *args: Any, name: str, **options: Any) -> None:
        self.stderr.write(banner.describe_database_line())
        name = name.strip()
        if not name or len(name) > 100:
            raise CommandError("name must be 1-100 characters")
        if ApiClient.objects.filter(name=name).exists():
            raise CommandError(f"an API client named {name!r} exists; rotate its key in admin")
        _, key = api_client_create(name=name)
        self.stdout.write(key)
