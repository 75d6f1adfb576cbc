"""``manage.py runconsumer``: this node's broker consumer alone (PROTOCOL.md section 5)."""

from __future__ import annotations

import asyncio
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from push_app import consumer


class Command(BaseCommand):
    help = "Consume every push for this node and hand it to its web processes (REDIS_URL)."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            consumer.check_configuration()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        asyncio.run(consumer.run())
