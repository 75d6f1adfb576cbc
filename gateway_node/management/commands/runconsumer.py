"""``manage.py runconsumer``: this node's broker consumer alone (PROTOCOL.md section 5)."""

from __future__ import annotations

import asyncio
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway_core import banner, metrics
from gateway_node import broker_process


class Command(BaseCommand):
    help = "Consume every push for this node and hand it to its web processes (REDIS_URL)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--metrics-port", type=int, default=0,
            help="serve this process's /metrics on this port (for nodes that do not share "
                 "PROMETHEUS_MULTIPROC_DIR between their processes; docs/monitoring.md)",
        )
        parser.add_argument("--metrics-host", default="127.0.0.1")

    def handle(self, *args: Any, metrics_port: int = 0, metrics_host: str = "127.0.0.1",
               **options: Any) -> None:
        self.stderr.write(banner.banner())
        try:
            broker_process.check_configuration()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        if metrics_port:
            try:
                metrics.serve(metrics_port, metrics_host)
            except OSError as exc:
                raise CommandError(
                    f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc}"
                ) from exc
        asyncio.run(broker_process.run())
