"""Run as a script against ``DATABASE_URL`` (PostgreSQL): two nodes' ledgers write totals of
one push at the same moment. The first writer's transaction stays open until the second
is seen waiting on its lock; then both commit. Prints the push's ``delivered``: 2 when the
writes serialise, 1 when the second lost the first's share."""

from __future__ import annotations

import os
import sys
import threading
import time

import django
import psycopg

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gatewaysite.settings")
django.setup()

from django.db import connections, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from push_app.ledger import DeliveryLedger  # noqa: E402
from push_app.models import PushLog  # noqa: E402

WAIT_S = 10


def waiting_on_locks(url: str) -> int:
    # A connection of its own: inside a transaction pg_stat_activity is a frozen snapshot.
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def main(push_id: str) -> None:
    url = os.environ["DATABASE_URL"]
    PushLog.objects.create(id=push_id, data_json="1", broadcast=True, created_at=timezone.now())
    first, second = DeliveryLedger(node_id="n1"), DeliveryLedger(node_id="n2")
    first.delivered(push_id, 1)
    second.delivered(push_id, 1)
    errors: list[BaseException] = []

    def second_writer() -> None:
        try:
            second.write(second.take())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=second_writer)
    with transaction.atomic():
        first.write(first.take())
        thread.start()
        deadline = time.monotonic() + WAIT_S
        while not waiting_on_locks(url):
            if time.monotonic() > deadline:
                sys.exit(f"the second writer never waited for the first within {WAIT_S} s")
            time.sleep(0.02)
    thread.join(WAIT_S)
    if thread.is_alive() or errors:
        sys.exit(f"second writer: {errors or 'still running'}")
    print(PushLog.objects.get(id=push_id).delivered)


if __name__ == "__main__":
    main(sys.argv[1])
