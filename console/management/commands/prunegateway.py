"""``manage.py prunegateway``: retention for push logs, webhook events, sessions and dead nodes.

Run it daily (cron or a systemd timer: docs/console.md). Defaults come from
``GATEWAY_RETENTION_PUSH_DAYS`` and ``GATEWAY_RETENTION_SESSION_DAYS`` (7 each); 0 keeps
that kind forever. Only one node of a cluster needs to run it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from gateway_core.conf import gateway_settings
from push_app.services import push_logs_prune, rejections_prune
from sessions_app.services import nodes_prune, sessions_prune
from webhooks.services import events_prune


class Command(BaseCommand):
    help = ("Delete push logs (with their deliveries and recipients) older than --push-days, "
            "closed sessions older than --session-days, and nodes dead for --node-days; "
            "a push still waiting for the broker or for a user within its ttl is kept.")

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
        parser.add_argument(
            "--before", type=_instant, default=None, metavar="DATETIME",
            help="delete push logs created and sessions closed before this instant "
                 "(ISO 8601 with its offset, e.g. 2026-11-30T12:00:00Z) instead of "
                 "--push-days and --session-days ago",
        )
        parser.add_argument("--dry-run", action="store_true",
                            help="count what would be deleted; delete nothing")
        parser.add_argument("--batch-size", type=int, default=1000)

    def handle(self, *args: Any, push_days: int | None, session_days: int | None,
               node_days: int | None, before: datetime | None, dry_run: bool,
               batch_size: int, **options: Any) -> None:
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

        def cutoff(days: int) -> tuple[datetime, str]:
            if before is not None:
                return before, f"before {before.isoformat()}"
            return now - timedelta(days=days), f"more than {days} d ago"

        if push_days or before is not None:
            at, said = cutoff(push_days)
            logs, deliveries, recipients = push_logs_prune(
                before=at, batch_size=max(1, batch_size), dry_run=dry_run, now=now)
            rejections = rejections_prune(before=at, dry_run=dry_run)
            events = events_prune(before=at, dry_run=dry_run)
            parts.append(f"{logs} push log(s) created {said} ({deliveries} delivery row(s), "
                         f"{recipients} recipient row(s), {rejections} rejection count(s))")
            parts.append(f"{events} webhook event(s) created {said}")
        if session_days or before is not None:
            at, said = cutoff(session_days)
            n = sessions_prune(closed_before=at, batch_size=max(1, batch_size),
                               dry_run=dry_run)
            parts.append(f"{n} session(s) closed {said}")
        if node_days:  # not by --before: a node seen a moment ago is alive
            n = nodes_prune(dead_before=now - timedelta(days=node_days), dry_run=dry_run)
            parts.append(f"{n} node(s) silent for more than {node_days} d")
        self.stdout.write(f"prunegateway {verb}: " + "; ".join(parts) if parts
                          else "prunegateway: retention is off (all days are 0)")


def _instant(text: str) -> datetime:
    """``--before``: an ISO 8601 instant with its offset (``Z`` for UTC)."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--before: not an ISO 8601 date and time: {text!r}") from None
    if at.tzinfo is None:
        raise CommandError(f"--before: give the offset (Z for UTC): {text!r}")
    return at
