"""The ``runalerts`` loop: one round now (``--once``, for cron and tests) or one every
``interval_s`` until SIGTERM/SIGINT, surviving database outages between rounds."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from django.db import DatabaseError, close_old_connections, connection

from monitoring.engine import AlertEngine, RoundReport

logger = logging.getLogger("gateway.alerts")


def sqlite_without_nodes() -> bool:
    """True when this process reads SQLite and no node has ever written its beat there: the
    fallback database of a terminal without the cluster's ``DATABASE_URL``, where every rule
    would quietly find nothing (issue #17)."""
    if connection.vendor != "sqlite":
        return False
    from sessions_app.models import Node

    try:
        return not Node.objects.exists()
    except DatabaseError:  # not even migrated
        return True


def run(
    *, engine: AlertEngine, once: bool, interval_s: float,
    stop: threading.Event | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
) -> None:
    """``once``: one round whose errors propagate (the exit status tells cron). Otherwise
    rounds until ``stop`` is set (SIGTERM and SIGINT set it); a failed round is logged and
    the next one comes after ``interval_s``."""
    if once:
        report = engine.run_once()
        if on_round is not None:
            on_round(report)
        return
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    logger.info("evaluating alerts every %g s", interval_s)
    while not stop.is_set():
        close_old_connections()  # a long-lived loop drops connections the database closed
        try:
            report = engine.run_once()
        except Exception:
            logger.exception("alert round failed; next one in %g s", interval_s)
        else:
            if on_round is not None:
                on_round(report)
        stop.wait(interval_s)
    logger.info("alert loop stopped")
