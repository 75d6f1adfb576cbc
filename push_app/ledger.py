"""Delivery accounting: what this node handed to sockets and what clients acknowledged.

Counting happens in memory on the hot path; ``flush`` writes the node's running totals to
``PushDelivery`` (one row per push and node, written as totals so a repeated flush is
harmless) and recomputes ``PushLog.delivered``/``acked`` as sums over every node's rows.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from push_app.models import PushDelivery, PushLog, PushStatus


@dataclass(slots=True)
class _Totals:
    delivered: int = 0
    acked: int = 0


class DeliveryLedger:
    #: How many recent pushes keep their totals in memory; older acks are not counted.
    max_tracked = 100_000

    def __init__(self, *, node_id: str) -> None:
        self.node_id = node_id
        self._totals: OrderedDict[str, _Totals] = OrderedDict()
        self._dirty: set[str] = set()

    def delivered(self, push_id: str, connections: int) -> None:
        totals = self._totals.get(push_id)
        if totals is None:
            totals = self._totals[push_id] = _Totals()
            if len(self._totals) > self.max_tracked:
                self._totals.popitem(last=False)
        totals.delivered += connections
        self._dirty.add(push_id)

    def acked(self, push_id: str) -> bool:
        """Count a client's ack; False for a push this node never delivered."""
        totals = self._totals.get(push_id)
        if totals is None or totals.acked >= totals.delivered:
            return False
        totals.acked += 1
        self._dirty.add(push_id)
        return True

    def take(self) -> dict[str, tuple[int, int]]:
        """The totals changed since the last take, for ``write`` (on the event loop)."""
        changed = {
            push_id: (self._totals[push_id].delivered, self._totals[push_id].acked)
            for push_id in self._dirty
            if push_id in self._totals
        }
        self._dirty.clear()
        return changed

    def parts(self, changed: dict[str, tuple[int, int]]) -> list[dict[str, tuple[int, int]]]:
        """``changed`` in slices of at most ``JOB_PUSHES``, a database job each."""
        items = sorted(changed.items())
        return [dict(items[i:i + JOB_PUSHES]) for i in range(0, len(items), JOB_PUSHES)]

    def untake(self, changed: dict[str, tuple[int, int]]) -> None:
        """Mark totals from a ``take`` whose ``write`` did not happen as changed again."""
        self._dirty.update(changed)

    def write(self, changed: dict[str, tuple[int, int]]) -> None:
        """Store totals taken by ``take`` (in a database thread).

        Plain SQL, written once per database and run over every changed push: the ORM's
        compiling of the same statements (a model instance and an ``IN`` parameter per
        push) cost several times the queries at thousands of pushes a second.
        """
        if not changed:
            return
        ids = sorted(changed)  # lock order: nodes writing the same pushes never deadlock
        sql = _statements()
        updated_at = PushDelivery._meta.get_field("updated_at").get_db_prep_save(
            timezone.now(), connection)
        with transaction.atomic(), connection.cursor() as cursor:
            for start in range(0, len(ids), WRITE_CHUNK):
                chunk = ids[start:start + WRITE_CHUNK]
                # Lock the pushes before summing: without it two nodes writing at once each
                # sum without the other's uncommitted row, and the last UPDATE of
                # ``delivered`` loses the other node's share.
                cursor.execute(sql.lock % _marks(len(chunk)), chunk)
                known = [row[0] for row in cursor.fetchall()]
                if not known:
                    continue
                if sql.upsert:
                    cursor.executemany(sql.upsert, [
                        (push_id, self.node_id, *changed[push_id], updated_at)
                        for push_id in known
                    ])
                else:  # no ON CONFLICT in this database's SQL: the ORM knows its upsert
                    PushDelivery.objects.bulk_create(
                        [PushDelivery(push_id=push_id, node_id=self.node_id,
                                      delivered=changed[push_id][0],
                                      acked=changed[push_id][1]) for push_id in known],
                        update_conflicts=True, unique_fields=["push", "node_id"],
                        update_fields=["delivered", "acked", "updated_at"],
                    )
                marks = _marks(len(known))
                cursor.execute(sql.totals % marks, known)
                cursor.execute(sql.delivered % marks, [
                    PushStatus.DELIVERED.value, *known, PushStatus.ACCEPTED.value,
                    PushStatus.PUBLISHED.value,
                ])


#: Pushes per statement (database parameter limits).
WRITE_CHUNK = 500
#: Pushes per database job: a few milliseconds of the database thread (about 17 µs a push
#: on SQLite), which the pushes' own commits share.
JOB_PUSHES = 250


@dataclass(frozen=True, slots=True)
class _Statements:
    lock: str
    upsert: str  # empty where the database has no ON CONFLICT: the ORM's upsert then
    totals: str
    delivered: str


_statements_by_vendor: dict[str, _Statements] = {}


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


def _statements() -> _Statements:
    """The ledger's SQL for this connection's database: ``%`` it with the id list's
    placeholders (the other parameters' are written ``%%s``)."""
    found = _statements_by_vendor.get(connection.vendor)
    if found is not None:
        return found
    q = connection.ops.quote_name
    log, dl = PushLog._meta, PushDelivery._meta
    log_table, dl_table = q(log.db_table), q(dl.db_table)
    lc = {f.attname: q(str(f.column)) for f in log.concrete_fields}
    dc = {f.attname: q(str(f.column)) for f in dl.concrete_fields}
    for_update = " FOR UPDATE" if connection.features.has_select_for_update else ""

    def total(column: str) -> str:
        return (f"COALESCE((SELECT SUM({dc[column]}) FROM {dl_table} "
                f"WHERE {dc['push_id']} = {log_table}.{lc['id']}), 0)")

    statements = _Statements(
        lock=(f"SELECT {lc['id']} FROM {log_table} WHERE {lc['id']} IN (%s) "
              f"ORDER BY {lc['id']}{for_update}"),
        upsert="" if connection.vendor not in ("sqlite", "postgresql") else (
                f"INSERT INTO {dl_table} ({dc['push_id']}, {dc['node_id']}, "
                f"{dc['delivered']}, {dc['acked']}, {dc['updated_at']}) "
                "VALUES (%s, %s, %s, %s, %s) "
                f"ON CONFLICT ({dc['push_id']}, {dc['node_id']}) DO UPDATE SET "
                f"{dc['delivered']} = EXCLUDED.{dc['delivered']}, "
                f"{dc['acked']} = EXCLUDED.{dc['acked']}, "
                f"{dc['updated_at']} = EXCLUDED.{dc['updated_at']}"),
        totals=(f"UPDATE {log_table} SET {lc['delivered']} = {total('delivered')}, "
                f"{lc['acked']} = {total('acked')} WHERE {lc['id']} IN (%s)"),
        delivered=(f"UPDATE {log_table} SET {lc['status']} = %%s WHERE {lc['id']} IN (%s) "
                   f"AND {lc['delivered']} > 0 AND {lc['status']} IN (%%s, %%s)"),
    )
    _statements_by_vendor[connection.vendor] = statements
    return statements
