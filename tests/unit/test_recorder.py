from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sessions_app.models import Node, SessionRecord
from sessions_app.recorder import DEAD_NODE_CLOSE_CODE, SessionRecorder, dead_node_ids
from sessions_app.registry import SessionManager
from tests.support.sessions import make_session

T0 = 1_800_000_000.0

pytestmark = pytest.mark.django_db


def dt(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


def recorder(node_id: str = "n1", *, timeout_s: int = 30) -> SessionRecorder:
    return SessionRecorder(node_id=node_id, address="10.0.0.1:8000", broker="local",
                           started_at=T0 - 100, node_timeout_s=timeout_s)


def open_session(rec: SessionRecorder, registry: SessionManager, user: str, sid: str,
                 at: float = T0):
    session = make_session(user, sid, at=at)
    session.remote_addr = "192.0.2.1"
    session.user_agent = "pytest"
    session.meta = {"plan": "pro"}
    registry.register(session, max_per_user=5)
    rec.opened(session)
    return session


def close_session(rec: SessionRecorder, registry: SessionManager, session, *, code: int,
                  at: float):
    registry.unregister(session)
    rec.closed(session, code=code, at=at)


def test_write_creates_node_and_session_rows():
    rec, registry = recorder(), SessionManager()
    open_session(rec, registry, "u1", "s1")
    open_session(rec, registry, "u2", "s2", at=T0 + 1)
    rec.write(rec.snapshot(registry, now=T0 + 2))

    node = Node.objects.get(id="n1")
    assert (node.address, node.broker, node.connections, node.users) == (
        "10.0.0.1:8000", "local", 2, 2)
    assert node.started_at == dt(T0 - 100)
    assert node.last_seen == dt(T0 + 2)
    assert node.stopped_at is None
    s1 = SessionRecord.objects.get(id="s1")
    assert (s1.user_id, s1.node_id, s1.remote_addr, s1.user_agent, s1.meta) == (
        "u1", "n1", "192.0.2.1", "pytest", {"plan": "pro"})
    assert s1.connected_at == dt(T0)
    assert s1.closed_at is None
    assert SessionRecord.objects.count() == 2

    # Nothing new: the next snapshot writes no session rows again.
    snap = rec.snapshot(registry, now=T0 + 3)
    assert (snap.opened, snap.closed, snap.seen) == ([], [], [])


def test_closes_are_written_with_code_and_time():
    rec, registry = recorder(), SessionManager()
    s1 = open_session(rec, registry, "u1", "s1")
    rec.write(rec.snapshot(registry, now=T0 + 1))
    close_session(rec, registry, s1, code=4008, at=T0 + 5)
    rec.write(rec.snapshot(registry, now=T0 + 6))
    row = SessionRecord.objects.get(id="s1")
    assert (row.closed_at, row.last_seen, row.close_code) == (dt(T0 + 5), dt(T0 + 5), 4008)
    assert Node.objects.get(id="n1").connections == 0


def test_many_closes_are_written_in_batches_and_keep_earlier_closes(
    django_assert_max_num_queries,
):
    rec, registry = recorder(), SessionManager()
    sessions = [open_session(rec, registry, f"u{i}", f"s{i}") for i in range(1200)]
    rec.write(rec.snapshot(registry, now=T0 + 1))
    # Another node expired s0 as dead meanwhile: its close stays as that node wrote it.
    SessionRecord.objects.filter(id="s0").update(closed_at=dt(T0 + 2), close_code=1006)
    for i, session in enumerate(sessions):
        close_session(rec, registry, session, code=4008 if i % 2 else 4012, at=T0 + 3 + i)
    snap = rec.snapshot(registry, now=T0 + 2000)
    with django_assert_max_num_queries(20):  # a few batched UPDATEs, not 1,200
        rec.write(snap)
    rows = {r.id: r for r in SessionRecord.objects.all()}
    assert (rows["s0"].closed_at, rows["s0"].close_code) == (dt(T0 + 2), 1006)
    assert (rows["s1"].closed_at, rows["s1"].last_seen, rows["s1"].close_code) == (
        dt(T0 + 4), dt(T0 + 4), 4008)
    assert (rows["s1199"].closed_at, rows["s1199"].close_code) == (dt(T0 + 1202), 4008)
    assert (rows["s2"].closed_at, rows["s2"].close_code) == (dt(T0 + 5), 4012)
    assert SessionRecord.objects.filter(closed_at__isnull=True).count() == 0


def test_a_session_opened_and_closed_between_writes_is_recorded_closed():
    rec, registry = recorder(), SessionManager()
    s1 = open_session(rec, registry, "u1", "s1")
    close_session(rec, registry, s1, code=4009, at=T0 + 1)
    rec.write(rec.snapshot(registry, now=T0 + 2))
    row = SessionRecord.objects.get(id="s1")
    assert (row.closed_at, row.close_code) == (dt(T0 + 1), 4009)


def test_last_seen_is_rewritten_only_after_seen_every_s():
    rec, registry = recorder(), SessionManager()
    assert rec.seen_every_s == 30.0
    s1 = open_session(rec, registry, "u1", "s1")
    rec.write(rec.snapshot(registry, now=T0))

    s1.last_seen = T0 + 29
    snap = rec.snapshot(registry, now=T0 + 29)
    assert snap.seen == []
    rec.write(snap)
    assert SessionRecord.objects.get(id="s1").last_seen == dt(T0)

    s1.last_seen = T0 + 30
    snap = rec.snapshot(registry, now=T0 + 30)
    assert snap.seen == [("s1", T0 + 30)]
    rec.write(snap)
    assert SessionRecord.objects.get(id="s1").last_seen == dt(T0 + 30)

    # Measured from the last write, not from the connection.
    s1.last_seen = T0 + 45
    assert rec.snapshot(registry, now=T0 + 45).seen == []


def test_stopping_marks_the_node_stopped():
    rec, registry = recorder(), SessionManager()
    rec.write(rec.snapshot(registry, now=T0, stopping=True))
    assert Node.objects.get(id="n1").stopped_at == dt(T0)
    rec.write(rec.snapshot(registry, now=T0 + 1))
    assert Node.objects.get(id="n1").stopped_at is None


def test_expire_dead_nodes_closes_sessions_of_dead_nodes_only():
    dead, live, me = recorder("dead", timeout_s=30), recorder("live"), recorder("n1")
    for rec, sid, beat in ((dead, "d1", T0 - 31), (live, "l1", T0 - 29), (me, "m1", T0 - 100)):
        registry = SessionManager()
        open_session(rec, registry, "u1", sid, at=beat)
        rec.write(rec.snapshot(registry, now=beat))

    assert me.expire_dead_nodes(dt(T0)) == 1
    rows = {r.id: (r.closed_at, r.close_code) for r in SessionRecord.objects.all()}
    assert rows == {"d1": (dt(T0), DEAD_NODE_CLOSE_CODE), "l1": (None, None), "m1": (None, None)}
    # Already closed sessions are not closed again.
    assert me.expire_dead_nodes(dt(T0 + 0.5)) == 0
    assert SessionRecord.objects.get(id="d1").closed_at == dt(T0)


def test_write_expires_dead_nodes_as_it_goes():
    dead = recorder("dead")
    registry = SessionManager()
    open_session(dead, registry, "u1", "d1", at=T0 - 60)
    dead.write(dead.snapshot(registry, now=T0 - 60))
    me = recorder("n1")
    me.write(me.snapshot(SessionManager(), now=T0))
    assert SessionRecord.objects.get(id="d1").close_code == DEAD_NODE_CLOSE_CODE


def test_start_closes_leftovers_of_the_same_node_id():
    old_life = recorder("n1")
    registry = SessionManager()
    open_session(old_life, registry, "u1", "s-old", at=T0)
    other = recorder("n2")
    open_session(other, SessionManager(), "u1", "s-other", at=T0)
    old_life.write(old_life.snapshot(registry, now=T0))
    other.write(other.snapshot(SessionManager(), now=T0))

    recorder("n1").start()
    mine = SessionRecord.objects.get(id="s-old")
    assert mine.closed_at is not None
    assert mine.close_code == DEAD_NODE_CLOSE_CODE
    assert SessionRecord.objects.get(id="s-other").closed_at is None


def test_dead_node_ids(monkeypatch):
    monkeypatch.setattr("django.utils.timezone.now", lambda: dt(T0))
    for node_id, age in (("n1", 100), ("dead", 31), ("live", 29)):
        Node.objects.create(id=node_id, started_at=dt(T0 - 1000), last_seen=dt(T0 - age))
    assert dead_node_ids(timeout_s=30, exclude="n1") == ["dead"]


def test_a_user_agent_with_nul_is_stored_without_it():
    # PostgreSQL text refuses NUL: one such header would fail the node's whole batch.
    rec, registry = recorder(), SessionManager()
    session = open_session(rec, registry, "u1", "s-nul")
    session.user_agent = "evil\x00agent"
    snap = rec.snapshot(registry, now=T0 + 1)
    assert snap.opened[0]["user_agent"] == "evilagent"
    rec.write(snap)
    assert SessionRecord.objects.get(id="s-nul").user_agent == "evilagent"
