"""``user.online`` and ``user.offline`` (PROTOCOL.md section 7), once per real transition,
cluster-wide.

Every node scans the sessions table (written by each node's recorder) once a second for
the apps that have an endpoint wanting presence events, and compares what is live with
what endpoints were last told (``PresenceState``). A transition is *claimed*: a conditional
UPDATE (online only if it was offline; offline only if still marked absent since the same
moment), or the unique insert of a user's first row, in the transaction that stores its
event. Two nodes that see the same transition both try; one row changes, one event is
stored.

- online: a user with a live session (open, on a live node) whom endpoints last saw offline.
- offline: a user last seen online who has had no live session for
  ``GATEWAY_PRESENCE_DEBOUNCE`` seconds since a scan first found none (``absent_since``). A
  user back within that time is just marked present again: neither event is sent.

Sessions reach the table in the recorders' batches (``GATEWAY_RECORD_INTERVAL``), so an
event follows its transition by up to that interval plus a scan.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, Min

from gateway_core import metrics
from gateway_core.conf import gateway_settings
from sessions_app.models import SessionRecord
from sessions_app.selectors import alive_since, node_alive_q
from webhooks.models import PRESENCE_EVENTS, USER_OFFLINE, USER_ONLINE, Endpoint, PresenceState
from webhooks.services import NewEvent, events_emit

logger = logging.getLogger("gateway.webhooks")


@dataclass(frozen=True, slots=True)
class Transition:
    app: str
    user_id: str
    type: str
    at: float
    sessions: int


def presence_apps() -> set[str]:
    """The apps with at least one endpoint that wants a presence event."""
    return {app for app, events in Endpoint.objects.values_list("app", "events")
            if any(e in PRESENCE_EVENTS for e in events)}


def presence_scan(*, now: float, debounce_s: int, node_timeout_s: int) -> list[Transition]:
    """One scan (on a database thread): the transitions this call claimed, their events
    stored."""
    apps = presence_apps()
    if not apps:
        return []
    at = datetime.fromtimestamp(now, tz=UTC)
    live: dict[tuple[str, str], tuple[int, datetime]] = {
        (row["app"], row["user_id"]): (row["n"], row["first"])
        for row in SessionRecord.objects.filter(app__in=apps, closed_at__isnull=True)
        .filter(node_alive_q(since=alive_since(now=at, timeout_s=node_timeout_s),
                             prefix="node__"))
        .values("app", "user_id").annotate(n=Count("id"), first=Min("connected_at"))
    }
    told_online: dict[tuple[str, str], datetime | None] = {
        (app, user): absent for app, user, absent in PresenceState.objects.filter(
            app__in=apps, online=True).values_list("app", "user_id", "absent_since")
    }
    found: list[Transition] = []
    for (app, user), (n, first) in live.items():
        if (app, user) in told_online:
            continue
        transition = Transition(app, user, USER_ONLINE, first.timestamp(), n)
        if _claim_online(transition, at):
            found.append(transition)
    back = [key for key, absent in told_online.items() if key in live and absent is not None]
    gone = [key for key, absent in told_online.items() if key not in live and absent is None]
    for app, user in back:
        PresenceState.objects.filter(app=app, user_id=user, online=True).update(
            absent_since=None)
    for app, user in gone:
        PresenceState.objects.filter(app=app, user_id=user, online=True,
                                     absent_since__isnull=True).update(absent_since=at)
    deadline = at - timedelta(seconds=debounce_s)
    for (app, user), absent in told_online.items():
        if (app, user) in live or absent is None or absent > deadline:
            continue
        transition = Transition(app, user, USER_OFFLINE, absent.timestamp(), 0)
        if _claim_offline(transition, absent, at):
            found.append(transition)
    return found


def _emit(transition: Transition, now: float) -> None:
    events_emit([NewEvent(app=transition.app, type=transition.type, data={
        "user": transition.user_id, "at": int(transition.at * 1000),
        "sessions": transition.sessions})], now=now)
    metrics.WEBHOOK_EVENTS.labels(gateway_settings.node_id, transition.app,
                                  transition.type).inc()


def _claim_online(transition: Transition, at: datetime) -> bool:
    """Mark the user online and store the event, in one transaction; False if another node
    claimed this transition first."""
    app, user = transition.app, transition.user_id
    with transaction.atomic():
        claimed = PresenceState.objects.filter(app=app, user_id=user, online=False).update(
            online=True, changed_at=at, absent_since=None)
        if not claimed:
            try:
                with transaction.atomic():
                    PresenceState.objects.create(app=app, user_id=user, online=True,
                                                 changed_at=at)
            except IntegrityError:
                return False  # another node claimed it: the row is there, online
        _emit(transition, at.timestamp())
    return True


def _claim_offline(transition: Transition, absent: datetime, at: datetime) -> bool:
    """Mark the user offline, only if still absent since ``absent``, and store the event."""
    with transaction.atomic():
        claimed = PresenceState.objects.filter(
            app=transition.app, user_id=transition.user_id, online=True,
            absent_since=absent).update(online=False, changed_at=at, absent_since=None)
        if claimed:
            _emit(transition, at.timestamp())
    return bool(claimed)


class PresenceWatcher:
    """The node's loop: a scan every ``interval_s``; ``on_emitted`` wakes the sender."""

    interval_s = 1.0

    def __init__(self, *, db: Callable[..., Any], on_emitted: Callable[[], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.on_emitted = on_emitted
        self.clock = clock

    async def run(self) -> None:
        while True:
            try:
                await self.scan_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("presence scan failed; next one in %.0f s", self.interval_s)
            await asyncio.sleep(self.interval_s)

    async def scan_once(self) -> list[Transition]:
        found: list[Transition] = await self.db(
            presence_scan, now=self.clock(),
            debounce_s=gateway_settings.presence_debounce_s,
            node_timeout_s=gateway_settings.node_timeout_s)
        if found:
            self.on_emitted()
        return found
