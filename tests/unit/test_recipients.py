"""Per-recipient state and inboxes in the database (PROTOCOL.md section 6): rows written
with the push on both write paths, the ledger's batched updates, the inbox a connecting
session reads, and settling (expired, dropped). Clocks are passed in; nothing sleeps."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from push_app import services
from push_app.models import PushRecipient
from push_app.recipients import RecipientLedger, _inbox_statements, inbox, settle
from push_app.validation import push_request
from push_app.writer import store_group

pytestmark = pytest.mark.django_db


def create(users, *, ttl=None, app="default", broadcast=False):
    body = {"data": {"n": 1}, **({"broadcast": True} if broadcast else {"users": users})}
    if ttl is not None:
        body["ttl"] = ttl
    log, _ = services.push_create(client=None, req=push_request(body), submit=lambda m: None,
                                  app=app)
    return log


def state(push_id: str, user: str) -> tuple[str, int]:
    row = PushRecipient.objects.get(push_id=push_id, user_id=user)
    return row.state, row.attempts


def test_recipients_start_pending_when_kept_and_offline_when_live_only():
    kept = create(["u1", "u2"], ttl=60)
    live = create(["u1"], ttl=0)
    broadcast = create(None, ttl=60, broadcast=True)
    assert state(kept.id, "u1") == ("pending", 0) and state(kept.id, "u2") == ("pending", 0)
    assert state(live.id, "u1") == ("offline", 0)
    assert not PushRecipient.objects.filter(push=broadcast).exists()


def test_the_group_commit_writes_the_same_recipients():
    outcome = store_group([(None, [push_request({"users": ["a", "b"], "data": 1, "ttl": 5})])],
                          timezone.now().timestamp(), "n1")
    (message,) = outcome[0]
    assert {r.user_id: (r.state, r.kept) for r in PushRecipient.objects.filter(
        push_id=message.id)} == {"a": ("pending", True), "b": ("pending", True)}


def test_the_ledger_counts_sockets_then_acks_per_user():
    log = create(["u1", "u2"], ttl=60)
    ledger = RecipientLedger()
    ledger.delivered(log.id, {"u1": 2})
    ledger.delivered(log.id, {"u1": 1, "u2": 1})
    ledger.write(ledger.take())
    assert state(log.id, "u1") == ("delivered", 3) and state(log.id, "u2") == ("delivered", 1)
    ledger.acked(log.id, "u2")
    assert ledger.recently_acked(log.id, "u2") and not ledger.recently_acked(log.id, "u1")
    taken = ledger.take()
    ledger.untake(taken)  # a failed write keeps what it had
    ledger.write(ledger.take())
    assert state(log.id, "u2")[0] == "acked"
    ledger.delivered(log.id, {"u2": 1})  # a late write does not undo the ack
    ledger.write(ledger.take())
    assert state(log.id, "u2") == ("acked", 2)


def test_the_ledger_writes_in_parts_in_any_order_to_the_same_end(monkeypatch):
    monkeypatch.setattr("push_app.recipients.JOB_ROWS", 2)
    log = create(["u1", "u2", "u3"], ttl=60)
    ledger = RecipientLedger()
    ledger.delivered(log.id, {"u1": 1, "u2": 1, "u3": 2})
    ledger.acked(log.id, "u1")
    taken = ledger.take()
    parts = ledger.parts(taken)
    assert [len(p.delivered) + len(p.acked) for p in parts] == [2, 2]
    # The ack lands in a later part than its delivery; written first, it still wins.
    for part in reversed(parts):
        ledger.write(part)
    assert [state(log.id, u) for u in ("u1", "u2", "u3")] == [
        ("acked", 1), ("delivered", 1), ("delivered", 2)]


def test_the_inbox_is_the_unacked_kept_pushes_in_accept_order():
    now = timezone.now()
    first = create(["u1"], ttl=60)
    live = create(["u1"], ttl=0)
    second = create(["u1"], ttl=60)
    acked = create(["u1"], ttl=60)
    other_app = create(["u1"], ttl=60, app="shop")
    ledger = RecipientLedger()
    ledger.delivered(second.id, {"u1": 1})
    ledger.acked(acked.id, "u1")
    ledger.write(ledger.take())
    found = inbox(app="default", user_id="u1", since=None, limit=10, now=now)
    assert [p.id for p in found.pushes] == [first.id, second.id]
    assert ['"redelivered":true' in p.frame for p in found.pushes] == [False, True]
    assert found.complete is None and live.id and other_app.id
    # With since: the app's kept broadcasts after it as well; the since push itself not.
    broadcast = create(None, ttl=60, broadcast=True)
    found = inbox(app="default", user_id="u1", since=first.id, limit=10, now=now)
    assert [p.id for p in found.pushes] == [second.id, broadcast.id]
    assert [p.targeted for p in found.pushes] == [True, False] and found.complete is True
    assert inbox(app="shop", user_id="u1", since=first.id, limit=10).complete is False
    # Expired ones are never replayed.
    later = now + timedelta(seconds=61)
    assert inbox(app="default", user_id="u1", since=None, limit=10, now=later).pushes == []


def test_settle_expires_and_drops_the_oldest_past_the_limit():
    logs = [create(["u1"], ttl=60) for _ in range(4)]
    short = create(["u2"], ttl=1)
    expired, dropped = settle(max_pending=2, now=timezone.now() + timedelta(seconds=2))
    assert (expired, dropped) == (1, 2)
    assert [state(log.id, "u1")[0] for log in logs] == ["dropped", "dropped", "pending",
                                                       "pending"]
    assert state(short.id, "u2")[0] == "expired"
    assert settle(max_pending=2) == (0, 0)  # idempotent


def test_inbox_reads_go_through_their_indexes_on_sqlite():
    """Every connection reads its inbox: none of its statements may walk the push log (the
    broadcasts read once used the ``app`` index and sorted every push of the app)."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's plans")
    sql = _inbox_statements()
    plans = {}
    with connection.cursor() as cursor:
        for name in ("known", "waiting", "broadcasts"):
            statement = getattr(sql, name)
            cursor.execute("EXPLAIN QUERY PLAN " + statement, [None] * statement.count("%s"))
            plans[name] = " | ".join(str(row[-1]) for row in cursor.fetchall())
    assert "USING INDEX recipient_inbox (app=? AND user_id=?)" in plans["waiting"]
    assert "USING INDEX pushlog_kept_broadcasts (app=? AND id>?)" in plans["broadcasts"]
    assert "TEMP B-TREE" not in " ".join(plans.values()), plans


def test_an_unacked_push_older_than_since_still_comes():
    """``since`` names the last push the client handled; a kept push to the user accepted
    before it but never acked (another node's, or its ack lost) is sent again anyway."""
    older = create(["u1"], ttl=60)
    handled = create(["u1"], ttl=60)
    found = inbox(app="default", user_id="u1", since=handled.id, limit=10)
    assert [p.id for p in found.pushes] == [older.id]
    assert found.complete is True
