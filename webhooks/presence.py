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

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, Max, Min

from gateway_core import metrics
from gateway_core.conf import gateway_settings
from sessions_app.models import SessionRecord
from sessions_app.selectors import alive_since, node_alive_q
from webhooks.models import PRESENCE_EVENTS, USER_OFFLINE, USER_ONLINE, Endpoint, PresenceState
from webhooks.scanning import ScanLoop
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
    found.extend(_brief_sessions(apps, live, told_online, at))
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


#: How far back closed sessions are read for users who came and went between two scans.
BRIEF_WINDOW_S = 30


def _brief_sessions(apps: set[str], live: Mapping[tuple[str, str], Any],
                    told_online: Mapping[tuple[str, str], Any],
                    at: datetime) -> list[Transition]:
    """Users whose sessions opened and closed between two scans (or within one recorder
    batch) were never seen live: a real transition all the same. Each gets ``user.online``
    (``sessions`` 0) and is marked absent, so that ``user.offline`` follows after the
    debounce. The latest such session counts if it opened after the user was last told
    offline."""
    rows = (SessionRecord.objects
            .filter(app__in=apps, closed_at__gte=at - timedelta(seconds=BRIEF_WINDOW_S))
            .values("app", "user_id").annotate(first=Max("connected_at")))
    brief = {(r["app"], r["user_id"]): r["first"] for r in rows
             if (r["app"], r["user_id"]) not in live
             and (r["app"], r["user_id"]) not in told_online}
    if not brief:
        return []
    told_offline = {
        (app, user): changed for app, user, changed in PresenceState.objects.filter(
            app__in={app for app, _ in brief}, user_id__in={user for _, user in brief},
            online=False).values_list("app", "user_id", "changed_at")}
    found = []
    for (app, user), first in brief.items():
        changed = told_offline.get((app, user))
        if changed is not None and first <= changed:
            continue
        transition = Transition(app, user, USER_ONLINE, first.timestamp(), 0)
        if _claim_online(transition, at, opened=first):
            found.append(transition)
    return found


def _emit(transition: Transition, now: float) -> None:
    events_emit([NewEvent(app=transition.app, type=transition.type, data={
        "user": transition.user_id, "at": int(transition.at * 1000),
        "sessions": transition.sessions})], now=now)
    metrics.WEBHOOK_EVENTS.labels(gateway_settings.node_id, transition.app,
                                  transition.type).inc()


def _claim_online(transition: Transition, at: datetime, *,
                  opened: datetime | None = None) -> bool:
    """Mark the user online and store the event, in one transaction; False if another node
    claimed this transition first. ``opened``: a brief session's start, which must be
    after the last offline (another node may have told both meanwhile); the user is then
    marked absent at once."""
    app, user = transition.app, transition.user_id
    absent = at if opened is not None else None
    with transaction.atomic():
        row = PresenceState.objects.filter(app=app, user_id=user, online=False)
        if opened is not None:
            row = row.filter(changed_at__lt=opened)
        claimed = row.update(online=True, changed_at=at, absent_since=absent)
        if not claimed:
            try:
                with transaction.atomic():
                    PresenceState.objects.create(app=app, user_id=user, online=True,
                                                 changed_at=at, absent_since=absent)
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


class PresenceWatcher(ScanLoop):
    """The node's loop: a scan every ``interval_s``; ``on_emitted`` wakes the sender."""

    what = "presence"

    async def scan_once(self) -> list[Transition]:
        found: list[Transition] = await self.db(
            presence_scan, now=self.clock(),
            debounce_s=gateway_settings.presence_debounce_s,
            node_timeout_s=gateway_settings.node_timeout_s)
        if found:
            self.on_emitted()
        return found
