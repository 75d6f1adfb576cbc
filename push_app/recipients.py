"""Per-recipient state and each user's inbox of kept pushes (PROTOCOL.md section 6).

Every targeted push has one ``PushRecipient`` row per target user, written with the push.
The hot paths only count in memory here: ``RecipientLedger.delivered`` when a node writes a
push to a user's socket, ``acked`` when a session acks it; the node writes what changed
once a second on its database thread (``take``/``write``/``untake``, as the delivery
ledger). A user's inbox (``inbox``) is the kept pushes (``ttl`` > 0) it has not acked, read
when one of its sessions connects, on any node: that is how a push reaches a user who was
offline, and comes again, marked ``redelivered``, until acked or expired.

``settle`` (each node, at its beat) moves what ran out to ``expired`` and what a user has
too many of to ``dropped``; readers also show a waiting push past its expiry as
``expired``, so the state is right before the sweep gets to it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

from push_app.models import WAITING, PushLog, PushRecipient, RecipientState

#: A push recipient: (push id, user id); the push's app is in the push id's row.
Key = tuple[str, str]
#: Recipients per database job: a few milliseconds of the database thread (about 11 µs a
#: recipient on SQLite), which the pushes' own commits share.
JOB_ROWS = 400


@dataclass(slots=True)
class Changes:
    """What a node saw since its last write: sockets written per recipient, acks."""

    delivered: dict[Key, int] = field(default_factory=dict)
    acked: set[Key] = field(default_factory=set)
    at: datetime = field(default_factory=timezone.now)

    def __bool__(self) -> bool:
        return bool(self.delivered or self.acked)


class RecipientLedger:
    """In memory, on the event loop: per-recipient deliveries and acks not yet written,
    and the acks of late (``recently_acked``), so that a replay on this node never sends
    a push its user acked a moment ago, before that ack reached the database."""

    max_recent_acks = 100_000

    def __init__(self) -> None:
        self._changes = Changes()
        self._recent: OrderedDict[Key, None] = OrderedDict()

    def delivered(self, push_id: str, users: dict[str, int]) -> None:
        """``users``: how many sockets of each user the push was written to here."""
        delivered = self._changes.delivered
        for user, sockets in users.items():
            key = (push_id, user)
            delivered[key] = delivered.get(key, 0) + sockets

    def acked(self, push_id: str, user_id: str) -> None:
        key = (push_id, user_id)
        self._changes.acked.add(key)
        self._recent[key] = None
        if len(self._recent) > self.max_recent_acks:
            self._recent.popitem(last=False)

    def recently_acked(self, push_id: str, user_id: str) -> bool:
        return (push_id, user_id) in self._recent

    def take(self) -> Changes:
        taken, self._changes = self._changes, Changes()
        taken.at = timezone.now()
        return taken

    def parts(self, taken: Changes) -> list[Changes]:
        """``taken`` in slices of at most ``JOB_ROWS`` recipients, a database job each."""
        rows: list[tuple[Key, int | None]] = [*sorted(taken.delivered.items()),
                                               *((key, None) for key in sorted(taken.acked))]
        parts = []
        for start in range(0, len(rows), JOB_ROWS):
            part = Changes(at=taken.at)
            for key, sockets in rows[start:start + JOB_ROWS]:
                if sockets is None:
                    part.acked.add(key)
                else:
                    part.delivered[key] = sockets
            parts.append(part)
        return parts

    def untake(self, taken: Changes) -> None:
        for key, sockets in taken.delivered.items():
            self._changes.delivered[key] = self._changes.delivered.get(key, 0) + sockets
        self._changes.acked |= taken.acked

    def write(self, taken: Changes) -> None:
        """On the database thread: one statement run over every changed recipient."""
        if not taken:
            return
        sql = _statements()
        at = PushRecipient._meta.get_field("delivered_at").get_db_prep_save(taken.at, connection)
        with transaction.atomic(), connection.cursor() as cursor:
            if taken.delivered:
                cursor.executemany(sql.delivered, [
                    (sockets, at, push_id, user)
                    for (push_id, user), sockets in sorted(taken.delivered.items())
                ])
            if taken.acked:
                cursor.executemany(sql.acked, [(at, push_id, user)
                                               for push_id, user in sorted(taken.acked)])


@dataclass(frozen=True, slots=True)
class _Statements:
    delivered: str
    acked: str


_statements_by_vendor: dict[str, _Statements] = {}


def _statements() -> _Statements:
    """Plain SQL, compiled once per database: the ORM's per-row update costs several times
    the statement at thousands of pushes a second (as ``push_app.ledger``)."""
    found = _statements_by_vendor.get(connection.vendor)
    if found is not None:
        return found
    q = connection.ops.quote_name
    meta = PushRecipient._meta
    c = {f.attname: q(str(f.column)) for f in meta.concrete_fields}
    table = q(meta.db_table)
    where = f"WHERE {c['push_id']} = %s AND {c['user_id']} = %s"
    written = (RecipientState.PENDING.value, RecipientState.OFFLINE.value)
    statements = _Statements(
        # A written push is ``delivered`` unless it was acked (or settled) meanwhile.
        delivered=(f"UPDATE {table} SET {c['attempts']} = {c['attempts']} + %s, "
                   f"{c['delivered_at']} = COALESCE({c['delivered_at']}, %s), "
                   f"{c['state']} = CASE WHEN {c['state']} IN ('{written[0]}', "
                   f"'{written[1]}') THEN '{RecipientState.DELIVERED.value}' "
                   f"ELSE {c['state']} END {where}"),
        acked=(f"UPDATE {table} SET {c['state']} = '{RecipientState.ACKED.value}', "
               f"{c['acked_at']} = COALESCE({c['acked_at']}, %s) {where}"),
    )
    _statements_by_vendor[connection.vendor] = statements
    return statements


# --- A user's inbox -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Replayed:
    """One push a connecting session gets before any live push."""

    id: str
    frame: str
    #: Targeted (counted for its recipient); a broadcast is not tracked per user.
    targeted: bool


@dataclass(frozen=True, slots=True)
class Recovery:
    pushes: list[Replayed]
    #: ``since`` was known (None: the client sent none).
    complete: bool | None


def replay_frame(log_id: str, topic: str | None, data_json: str, created: datetime, *,
                 redelivered: bool) -> str:
    """A push frame as ``PushMessage.frame`` builds it, with ``redelivered`` when set."""
    return (
        '{"type":"push","id":' + json.dumps(log_id)
        + ',"topic":' + json.dumps(topic)
        + ',"data":' + data_json
        + ',"ts":' + str(int(created.timestamp() * 1000))
        + (',"redelivered":true}' if redelivered else "}")
    )


#: One connecting session's inbox read: (app, user id, ``since`` or None).
InboxAsk = tuple[str, str, str | None]


def inboxes(asks: Sequence[InboxAsk], *, limit: int) -> list[Recovery | Exception]:
    """``inbox`` for the sessions connecting at the same moment, in one database job: in a
    reconnect storm the hand-off to the database thread cost more than the read itself
    (docs/performance.md, "What a reconnect costs"). A read that fails fails alone."""
    found: list[Recovery | Exception] = []
    for app, user_id, since in asks:
        try:
            found.append(inbox(app=app, user_id=user_id, since=since, limit=limit))
        except Exception as exc:
            found.append(exc)
    return found


def inbox(*, app: str, user_id: str, since: str | None, limit: int,
          now: datetime | None = None) -> Recovery:
    """What a session of the user gets on connecting (PROTOCOL.md section 6), in accept
    order: the kept pushes to the user it has not acked (at most ``limit``, the newest),
    and with ``since``, the app's kept broadcasts after it too. The unacked targeted
    pushes come whatever ``since`` says (but never the ``since`` push itself): one the
    client has not acked may be older than the last it handled (accepted by another node,
    or its ack lost), and is sent again on every connection until acked.

    One query, three with ``since``, each on an index (``recipient_inbox``,
    ``pushlog_kept_broadcasts``), as plain SQL compiled once: every connection runs this,
    and building the same querysets through the ORM cost a hundred times the queries."""
    now = now or timezone.now()
    sql = _inbox_statements()
    at = connection.ops.adapt_datetimefield_value(now)
    complete: bool | None = None
    with connection.cursor() as cursor:
        if since is not None:
            cursor.execute(sql.known, [since, app])
            complete = cursor.fetchone() is not None
        cursor.execute(sql.waiting, [app, user_id, at, limit])
        waiting = [row for row in cursor.fetchall() if row[0] != since]
        broadcasts: list[Any] = []
        if since is not None:
            cursor.execute(sql.broadcasts, [app, at, since, limit])
            broadcasts = cursor.fetchall()
    pushes = [Replayed(id=push_id, targeted=True,
                       frame=replay_frame(push_id, topic, data, _aware(created),
                                          redelivered=attempts > 0))
              for push_id, attempts, topic, data, created in waiting]
    pushes.extend(Replayed(id=push_id, targeted=False,
                           frame=replay_frame(push_id, topic, data, _aware(created),
                                              redelivered=False))
                  for push_id, topic, data, created in broadcasts)
    pushes.sort(key=lambda p: p.id)
    return Recovery(pushes=pushes, complete=complete)


def _aware(value: datetime | str) -> datetime:
    """A ``created_at`` from a plain cursor: naive UTC on SQLite (a string if no converter
    ran), aware on PostgreSQL."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if timezone.is_naive(value) else value


@dataclass(frozen=True, slots=True)
class _InboxStatements:
    known: str
    waiting: str
    broadcasts: str


_inbox_by_vendor: dict[str, _InboxStatements] = {}


def _inbox_statements() -> _InboxStatements:
    """The inbox's SQL for this connection's database. The conditions are written as the
    partial indexes' own (``kept``, ``state IN (…)`` as literals, ``broadcast``), so that
    SQLite sees they imply them and uses the indexes."""
    found = _inbox_by_vendor.get(connection.vendor)
    if found is not None:
        return found
    q = connection.ops.quote_name
    r_meta, l_meta = PushRecipient._meta, PushLog._meta
    r = {f.attname: f"{q(r_meta.db_table)}.{q(str(f.column))}" for f in r_meta.concrete_fields}
    lg = {f.attname: f"{q(l_meta.db_table)}.{q(str(f.column))}" for f in l_meta.concrete_fields}
    states = ", ".join(f"'{s.value}'" for s in WAITING)
    waiting = (
        f"SELECT {r['push_id']}, {r['attempts']}, {lg['topic']}, {lg['data_json']}, "
        f"{lg['created_at']} FROM {q(r_meta.db_table)} INNER JOIN {q(l_meta.db_table)} "
        f"ON {r['push_id']} = {lg['id']} "
        f"WHERE {r['app']} = %s AND {r['user_id']} = %s AND {r['kept']} "
        f"AND {r['state']} IN ({states}) AND {r['expires_at']} > %s"
    )
    order = f" ORDER BY {r['push_id']} DESC LIMIT %s"
    statements = _InboxStatements(
        known=f"SELECT 1 FROM {q(l_meta.db_table)} WHERE {lg['id']} = %s AND {lg['app']} = %s",
        waiting=waiting + order,
        broadcasts=(
            f"SELECT {lg['id']}, {lg['topic']}, {lg['data_json']}, {lg['created_at']} "
            f"FROM {q(l_meta.db_table)} WHERE {lg['app']} = %s AND {lg['broadcast']} "
            f"AND {lg['expires_at']} > %s AND {lg['id']} > %s "
            f"ORDER BY {lg['id']} DESC LIMIT %s"),
    )
    _inbox_by_vendor[connection.vendor] = statements
    return statements


# --- Settling -------------------------------------------------------------------------------

def settle(*, max_pending: int, now: datetime | None = None) -> tuple[int, int]:
    """Waiting recipients whose push expired become ``expired``; a user's waiting kept
    pushes past ``max_pending`` become ``dropped``, oldest first. ``(expired, dropped)``.
    Idempotent, so every node may run it."""
    now = now or timezone.now()
    expired = PushRecipient.objects.filter(state__in=WAITING, expires_at__lte=now).update(
        state=RecipientState.EXPIRED)
    dropped = 0
    for app, user_id in list(_crowded(max_pending)):
        old = list(PushRecipient.objects.filter(app=app, user_id=user_id, kept=True,
                                                state__in=WAITING)
                   .order_by("-push_id").values_list("push_id", flat=True)[max_pending:])
        if old:
            dropped += PushRecipient.objects.filter(
                app=app, user_id=user_id, push_id__in=old, state__in=WAITING,
            ).update(state=RecipientState.DROPPED)
    return expired, dropped


def _crowded(max_pending: int) -> Iterable[tuple[str, str]]:
    """Users with more than ``max_pending`` kept pushes waiting (one grouped query over the
    waiting rows' index)."""
    return (PushRecipient.objects.filter(kept=True, state__in=WAITING)
            .values("app", "user_id").annotate(n=Count("id")).filter(n__gt=max_pending)
            .values_list("app", "user_id"))


def shown_state(recipient: PushRecipient, now: datetime) -> str:
    """The state as readers see it: a waiting push past its expiry is ``expired`` at once,
    before ``settle`` writes it."""
    if (recipient.state in WAITING and recipient.expires_at is not None
            and recipient.expires_at <= now):
        return RecipientState.EXPIRED.value
    return str(recipient.state)

