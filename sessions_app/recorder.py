"""Writes this node and its sessions to the database in batches, never per heartbeat.

``snapshot`` runs on the event loop and copies what changed into plain data; ``write`` runs
in a database thread. Besides its own rows, each node expires the open sessions of nodes
that stopped beating, so presence never shows a dead node's users as online.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from sessions_app.models import Node, SessionRecord
from sessions_app.registry import ChannelSession, SessionManager
from sessions_app.selectors import alive_since

#: Close code written for sessions of a node that died: the client saw the drop as 1006.
DEAD_NODE_CLOSE_CODE = 1006


def _dt(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


@dataclass
class Snapshot:
    now: float
    connections: int
    users: int
    opened: list[dict[str, Any]] = field(default_factory=list)
    closed: list[tuple[str, float, int]] = field(default_factory=list)
    seen: list[tuple[str, float]] = field(default_factory=list)
    stopping: bool = False
    #: Per app: connections, users and pushes per second here (``Node.apps``).
    apps: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Routed delivery's figures (``Node.routing``), set by the node.
    routing: dict[str, Any] = field(default_factory=dict)


class SessionRecorder:
    #: A live session's ``last_seen`` is rewritten at most this often.
    seen_every_s = 30.0

    def __init__(self, *, node_id: str, address: str, broker: str, started_at: float,
                 node_timeout_s: int) -> None:
        self.node_id = node_id
        self.address = address or f"pid {os.getpid()}"
        self.broker = broker
        self.started_at = started_at
        self.node_timeout_s = node_timeout_s
        self._opened: dict[str, ChannelSession] = {}
        self._closed: list[tuple[str, float, int]] = []
        self._recorded_seen: dict[str, float] = {}

    def opened(self, session: ChannelSession) -> None:
        self._opened[session.session_id] = session

    def closed(self, session: ChannelSession, *, code: int, at: float) -> None:
        self._closed.append((session.session_id, at, code))

    def snapshot(self, registry: SessionManager, *, now: float, stopping: bool = False,
                 push_rates: dict[str, float] | None = None) -> Snapshot:
        snap = Snapshot(now=now, connections=len(registry), users=registry.user_count,
                        stopping=stopping)
        rates = push_rates or {}
        for app, (connections, users) in registry.counts_by_app().items():
            snap.apps[app] = {"connections": connections, "users": users,
                              "pushes_per_s": round(rates.get(app, 0.0), 2)}
        for app, rate in rates.items():
            snap.apps.setdefault(app, {"connections": 0, "users": 0,
                                       "pushes_per_s": round(rate, 2)})
        for session in self._opened.values():
            snap.opened.append({
                "id": session.session_id,
                "app": session.app_id,
                "user_id": session.user_id,
                "connected_at": session.connected_at,
                "last_seen": session.last_seen,
                "remote_addr": session.remote_addr[:64],
                # A header may carry NUL, which PostgreSQL text refuses: one such client
                # would fail every write of the node's session batch.
                "user_agent": session.user_agent[:512].replace("\x00", ""),
                "meta": session.meta,
            })
            self._recorded_seen[session.session_id] = session.last_seen
        self._opened.clear()
        snap.closed, self._closed = self._closed, []
        for session_id, _, _ in snap.closed:
            self._recorded_seen.pop(session_id, None)
        for session in registry.by_id.values():
            recorded = self._recorded_seen.get(session.session_id)
            if recorded is not None and session.last_seen - recorded >= self.seen_every_s:
                snap.seen.append((session.session_id, session.last_seen))
                self._recorded_seen[session.session_id] = session.last_seen
        return snap

    def write(self, snap: Snapshot) -> None:
        now = _dt(snap.now)
        with transaction.atomic():
            Node.objects.update_or_create(
                id=self.node_id,
                defaults={
                    "address": self.address,
                    "broker": self.broker,
                    "started_at": _dt(self.started_at),
                    "last_seen": now,
                    "stopped_at": now if snap.stopping else None,
                    "connections": snap.connections,
                    "users": snap.users,
                    "apps": snap.apps,
                    "routing": snap.routing,
                },
            )
            if snap.opened:
                SessionRecord.objects.bulk_create(
                    [
                        SessionRecord(
                            id=row["id"], app=row["app"], user_id=row["user_id"],
                            node_id=self.node_id,
                            connected_at=_dt(row["connected_at"]), last_seen=_dt(row["last_seen"]),
                            remote_addr=row["remote_addr"], user_agent=row["user_agent"],
                            meta=row["meta"],
                        )
                        for row in snap.opened
                    ],
                    ignore_conflicts=True,
                )
            if snap.closed or snap.seen:
                _write_closes_and_beats(snap)
            self.expire_dead_nodes(now)

    def expire_dead_nodes(self, now: datetime) -> int:
        """Close the sessions of nodes whose last beat is older than the node timeout."""
        deadline = alive_since(now=now, timeout_s=self.node_timeout_s)
        dead = Node.objects.filter(last_seen__lt=deadline).exclude(id=self.node_id)
        return SessionRecord.objects.filter(node__in=dead, closed_at__isnull=True).update(
            closed_at=now, close_code=DEAD_NODE_CLOSE_CODE
        )

    def start(self) -> None:
        """At start-up, in a database thread: close what this node id left open last time."""
        now = timezone.now()
        SessionRecord.objects.filter(node_id=self.node_id, closed_at__isnull=True).update(
            closed_at=now, close_code=DEAD_NODE_CLOSE_CODE
        )


def _write_closes_and_beats(snap: Snapshot) -> None:
    """Closes and ``last_seen`` beats as one plain ``UPDATE`` each, run over every row.

    A drained node or a reconnect storm closes thousands of sessions at once; Django's
    ``bulk_update`` builds a ``CASE`` over every id per statement, which took the database
    thread most of a drain (docs/performance.md, kept pushes). Rows already closed (by
    another node expiring this one) keep what they were closed with.
    """
    q = connection.ops.quote_name
    meta = SessionRecord._meta
    c = {f.attname: q(str(f.column)) for f in meta.concrete_fields}
    table = q(meta.db_table)
    prep = meta.get_field("last_seen").get_db_prep_save
    with connection.cursor() as cursor:
        if snap.closed:
            cursor.executemany(
                f"UPDATE {table} SET {c['closed_at']} = %s, {c['last_seen']} = %s, "
                f"{c['close_code']} = %s WHERE {c['id']} = %s AND {c['closed_at']} IS NULL",
                [(prep(_dt(at), connection), prep(_dt(at), connection), code, sid)
                 for sid, at, code in snap.closed])
        if snap.seen:
            cursor.executemany(
                f"UPDATE {table} SET {c['last_seen']} = %s WHERE {c['id']} = %s",
                [(prep(_dt(seen), connection), sid) for sid, seen in snap.seen])


def dead_node_ids(*, timeout_s: int, exclude: str) -> list[str]:
    deadline = alive_since(timeout_s=timeout_s)
    return list(
        Node.objects.filter(last_seen__lt=deadline).exclude(id=exclude).values_list("id", flat=True)
    )
