"""``manage.py rungateway``: a whole node in one process (PROTOCOL.md section 5)."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gatewaysite.conf import gateway_settings
from gatewaysite.node import Node, set_node
from gatewaysite.servers import SERVERS, ServerError


class Command(BaseCommand):
    help = "Run a gateway node: WebSocket, REST API, admin, metrics and the broker consumer."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--server", choices=sorted(SERVERS), default="daphne")
        parser.add_argument(
            "--no-consumer", action="store_true",
            help="serve only; a separate `runconsumer` feeds this node through REDIS_URL",
        )
        parser.add_argument(
            "--no-migrate", action="store_true",
            help="skip applying migrations at start (run `migrate` once per cluster instead)",
        )

    def handle(self, *args: Any, host: str, port: int, server: str, no_migrate: bool,
               no_consumer: bool, **options: Any) -> None:
        if no_consumer and not gateway_settings.redis_url:
            raise CommandError("--no-consumer needs REDIS_URL: runconsumer reaches this "
                               "process through the node's channel layer")
        if not no_migrate:
            call_command("migrate", interactive=False, verbosity=0)
        node = Node(role="web" if no_consumer else "all", address=f"{host}:{port}")
        set_node(node)

        def ready() -> None:
            self.stdout.write(
                f"gateway node {node.node_id} listening on http://{host}:{port} "
                f"(server {server}, broker {gateway_settings.broker})"
            )
            self.stdout.flush()

        try:
            SERVERS[server](host=host, port=port, node=node, on_ready=ready)
        except ServerError as exc:
            raise CommandError(f"cannot serve on {host}:{port}: {exc}") from exc
