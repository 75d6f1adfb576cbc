"""``manage.py prunegateway``: retention for push logs, webhook events, sessions and dead nodes.

Run it daily (cron or a systemd timer: docs/console.md). Defaults come from
``GATEWAY_RETENTION_PUSH_DAYS`` and ``GATEWAY_RETENTION_SESSION_DAYS`` (7 each); 0 keeps
that kind forever. Only one node of a cluster needs to run it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from gateway_core.conf import gateway_settings
from push_app.services import push_logs_prune, rejections_prune
from sessions_app.services import nodes_prune, sessions_prune
from webhooks.services import events_prune


class Command(BaseCommand):
    help = ("Delete push logs (with their per-node deliveries) older than --push-days, "
            "closed sessions older than --session-days, and nodes dead for --node-days.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--push-days", type=int, default=None,
            help="keep push logs this many days (default GATEWAY_RETENTION_PUSH_DAYS; 0: all)",
        )
        parser.add_argument(
            "--session-days", type=int, default=None,
            help="keep closed sessions this many days "
                 "(default GATEWAY_RETENTION_SESSION_DAYS; 0: all)",
        )
        parser.add_argument(
            "--node-days", type=int, default=None,
            help="delete nodes without a beat for this many days (default: --session-days)",
        )
        parser.add_argument("--dry-run", action="store_true",
                            help="count what would be deleted; delete nothing")
        parser.add_argument("--batch-size", type=int, default=1000)

    def handle(self, *args: Any, push_days: int | None, session_days: int | None,
               node_days: int | None, dry_run: bool, batch_size: int, **options: Any) -> None:
        push_days = gateway_settings.retention_push_days if push_days is None else push_days
        session_days = (gateway_settings.retention_session_days if session_days is None
                        else session_days)
        node_days = session_days if node_days is None else node_days
        for name, value in (("--push-days", push_days), ("--session-days", session_days),
                            ("--node-days", node_days), ("--batch-size", batch_size)):
            if value < 0:
                raise CommandError(f"{name} must be 0 or more, got {value}")
        now = timezone.now()
        verb = "would delete" if dry_run else "deleted"
        parts: list[str] = []
        if push_days:
            logs, deliveries = push_logs_prune(before=now - timedelta(days=push_days),
                                               batch_size=max(1, batch_size), dry_run=dry_run)
            rejections = rejections_prune(before=now - timedelta(days=push_days),
                                          dry_run=dry_run)
            events = events_prune(before=now - timedelta(days=push_days), dry_run=dry_run)
            parts.append(f"{logs} push log(s) older than {push_days} d "
                         f"({deliveries} delivery row(s), {rejections} rejection count(s))")
            parts.append(f"{events} webhook event(s) older than {push_days} d")
        if session_days:
            n = sessions_prune(closed_before=now - timedelta(days=session_days),
                               batch_size=max(1, batch_size), dry_run=dry_run)
            parts.append(f"{n} session(s) closed more than {session_days} d ago")
        if node_days:
            n = nodes_prune(dead_before=now - timedelta(days=node_days), dry_run=dry_run)
            parts.append(f"{n} node(s) silent for more than {node_days} d")
        self.stdout.write(f"prunegateway {verb}: " + "; ".join(parts) if parts
                          else "prunegateway: retention is off (all days are 0)")
