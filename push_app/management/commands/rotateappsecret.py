"""``manage.py rotateappsecret <id>``: a new client-token secret for the app, printed as the
last line on stdout; the old one stays valid as ``previous``. ``--drop-previous``: stop
accepting the previous secret (tokens signed with it get 4001 from then on)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway_core import banner
from gateway_core.conf import gateway_settings
from push_app.models import App
from push_app.tenancy import AppInvalid, app_drop_previous, app_rotate


class Command(BaseCommand):
    help = "Rotate an app's client-token secret, or drop its previous one."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("app_id")
        parser.add_argument("--drop-previous", action="store_true",
                            help="stop accepting tokens signed with the previous secret")

    def handle(self, *args: Any, app_id: str, drop_previous: bool, **options: Any) -> None:
        self.stderr.write(banner.describe_database_line())
        app = App.objects.filter(pk=app_id).first()
        if app is None:
            raise CommandError(f"no app {app_id!r}")
        try:
            if drop_previous:
                dropped = app_drop_previous(app=app)
                self.stderr.write("previous secret dropped\n" if dropped
                                  else "there was no previous secret\n")
                return
            secret = app_rotate(app=app)
        except AppInvalid as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(
            f"new secret for {app_id} (tokens signed with the previous one stay valid until "
            f"--drop-previous; nodes see the change within "
            f"{gateway_settings.record_interval_s} s):\n")
        self.stdout.write(secret)
