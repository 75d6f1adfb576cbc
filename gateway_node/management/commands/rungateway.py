"""``manage.py rungateway``: a whole node in one process (PROTOCOL.md section 5), or with
``--workers N`` one per worker process on the same port (``gateway_node/workers.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from gateway_core import banner
from gateway_core.conf import gateway_settings
from gateway_node import workers as worker_processes
from gateway_node.node import GatewayNode, set_node
from gateway_node.servers import LISTEN_BACKLOG, SERVERS, ServerError


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
        parser.add_argument(
            "--workers", type=int, default=1, metavar="N",
            help="run N worker processes on the same port (Linux SO_REUSEPORT), each a node "
                 "of the cluster named <GATEWAY_NODE_ID>-w<i>; needs the rocketmq or redis "
                 "broker (default 1: this process is the node)",
        )
        # Set by the --workers supervisor on each worker's command line.
        parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)

    def handle(self, *args: Any, host: str, port: int, server: str, no_migrate: bool,
               no_consumer: bool, workers: int, reuse_port: bool, ready_fd: int | None,
               **options: Any) -> None:
        if ready_fd is None:  # a worker of --workers: its supervisor has said it
            self.stderr.write(banner.banner())
        if no_consumer and not gateway_settings.redis_url:
            raise CommandError("--no-consumer needs REDIS_URL: runconsumer reaches this "
                               "process through the node's channel layer")
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        if workers > 1:
            self.check_workers(no_consumer)
        if not no_migrate:
            call_command("migrate", interactive=False, verbosity=0)
        if workers > 1:
            self.supervise(host=host, port=port, server=server, workers=workers)
            return
        sock = None
        if reuse_port:
            try:
                sock = worker_processes.listening_socket(host, port, backlog=LISTEN_BACKLOG)
            except OSError as exc:
                raise CommandError(f"cannot serve on {host}:{port}: {exc}") from exc
        node = GatewayNode(role="web" if no_consumer else "all", address=f"{host}:{port}")
        set_node(node)

        def ready() -> None:
            self.stdout.write(
                f"gateway node {node.node_id} listening on http://{host}:{port} "
                f"(server {server}, broker {gateway_settings.broker})"
            )
            self.stdout.flush()
            if ready_fd is not None:
                worker_processes.notify_ready(ready_fd)

        try:
            SERVERS[server](host=host, port=port, node=node, on_ready=ready,
                            **({"sock": sock} if sock is not None else {}))
        except ServerError as exc:
            raise CommandError(f"cannot serve on {host}:{port}: {exc}") from exc

    def check_workers(self, no_consumer: bool) -> None:
        if gateway_settings.broker == "local":
            raise CommandError(
                "--workers needs a broker the worker processes share: GATEWAY_BROKER=local "
                "lives inside one process. Set GATEWAY_BROKER=redis (with REDIS_URL) or "
                "GATEWAY_BROKER=rocketmq, or run one process (--workers 1)."
            )
        if no_consumer:
            raise CommandError("--workers runs whole nodes; it does not combine with "
                               "--no-consumer")
        if not worker_processes.supported():
            raise CommandError("--workers needs Linux (SO_REUSEPORT spreads the connections "
                               "over the workers); run one rungateway per port instead")
        if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
            self.stderr.write("warning: several workers on one SQLite file queue behind its "
                              "write lock; use PostgreSQL (DATABASE_URL) for --workers")

    def supervise(self, *, host: str, port: int, server: str, workers: int) -> None:
        """Run ``workers`` copies of this command, one node each, until stopped."""
        connections.close_all()  # the migration's connection: the workers open their own
        manage_py = Path(settings.BASE_DIR) / "manage.py"

        def command(bound_port: int) -> list[str]:
            # Every option that changes how a worker serves is passed on here.
            return [sys.executable, str(manage_py), "rungateway", "--host", host,
                    "--port", str(bound_port), "--server", server, "--no-migrate",
                    "--reuse-port"]

        def ready(running: list[worker_processes.Worker], bound_port: int) -> None:
            self.stdout.write(
                f"gateway supervisor: {len(running)} workers listening on "
                f"http://{host}:{bound_port} (nodes {', '.join(w.node_id for w in running)}; "
                f"server {server}, broker {gateway_settings.broker})"
            )
            self.stdout.flush()

        try:
            status = worker_processes.supervise(
                command=command, node_id=gateway_settings.node_id, count=workers,
                host=host, port=port, on_ready=ready,
            )
        except OSError as exc:
            raise CommandError(f"cannot serve on {host}:{port}: {exc}") from exc
        if status:
            raise CommandError("a worker failed (see the log above)", returncode=status)
