"""``manage.py createapp <id> [--name N] [--max-connections N] [--pushes-per-second N]``:
creates an app (PROTOCOL.md section 9) and prints its client-token secret as the last line
on stdout (shown once). Limits change later in admin."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway_core import banner
from push_app.tenancy import AppInvalid, app_create


class Command(BaseCommand):
    help = ("Create an app and print its client-token secret (sign its users' tokens with "
            "it, header kid = the app id).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("app_id", help="a-z 0-9 _ -, at most 64, e.g. shop")
        parser.add_argument("--name", default="", help="a name for operators")
        parser.add_argument("--max-connections", type=int, default=None,
                            help="open connections across the cluster (4003 past it)")
        parser.add_argument("--pushes-per-second", type=int, default=None,
                            help="pushes per second across the cluster (429 past it)")

    def handle(self, *args: Any, app_id: str, name: str, max_connections: int | None,
               pushes_per_second: int | None, **options: Any) -> None:
        self.stderr.write(banner.describe_database_line())
        for flag, value in (("--max-connections", max_connections),
                            ("--pushes-per-second", pushes_per_second)):
            if value is not None and value < 1:
                raise CommandError(f"{flag} must be at least 1 (leave it out for no limit)")
        try:
            app, secret = app_create(app_id=app_id, name=name.strip()[:100],
                                     max_connections=max_connections,
                                     pushes_per_second=pushes_per_second)
        except AppInvalid as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(
            f"app {app.pk} created; its API keys: manage.py createapikey <name> --app {app.pk}\n"
            "its client-token secret (shown once; sign HS256 with header kid="
            f"{app.pk!r}):\n")
        self.stdout.write(secret)
