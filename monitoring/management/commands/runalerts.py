"""``manage.py runalerts``: evaluate the alert rules and notify (docs/monitoring.md)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from gateway_core import banner
from monitoring import runner
from monitoring.conf import alert_settings
from monitoring.engine import AlertEngine, RoundReport


class Command(BaseCommand):
    help = "Evaluate the gateway's alert rules against the database and send notices."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true",
                            help="one round, then exit (for cron and tests)")
        parser.add_argument("--interval", type=float, default=None,
                            help="seconds between rounds (default GATEWAY_ALERT_INTERVAL)")

    def handle(self, *args: Any, once: bool, interval: float | None, **options: Any) -> None:
        self.stderr.write(banner.banner())
        if runner.sqlite_without_nodes():
            self.stderr.write(
                "warning: this database is SQLite and no gateway node has written its beat "
                "here: the nodes most likely use another DATABASE_URL (docs/cluster.md: "
                "source cluster.env in this terminal)")
        engine = AlertEngine()
        if not engine.notifiers:
            self.stderr.write("no alert channel configured (GATEWAY_ALERT_WEBHOOK_URL, "
                              "GATEWAY_ALERT_EMAIL): alerts are only recorded and logged")

        def report(result: RoundReport) -> None:
            self.stdout.write(str(result))
            self.stdout.flush()

        runner.run(engine=engine, once=once, on_round=report,
                   interval_s=interval if interval is not None else alert_settings.interval_s)
