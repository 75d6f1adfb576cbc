"""The push log's group commit (push_app/writer.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import DatabaseError, OperationalError

from gateway_core.messages import PushMessage
from push_app import services, writer
from push_app.api.errors import error_parts
from push_app.errors import PushUnavailable
from push_app.models import ApiClient, PushLog, PushStatus
from push_app.selectors import users_contain_q
from push_app.validation import PushRequest, RequestInvalid, push_request
from push_app.writer import ClientRef, ClientRevoked, PushWriter, store_group, store_keyed
from tests.support.db import run_db

pytestmark = pytest.mark.django_db(transaction=True)

NOW = 1_800_000_000.0


def req(user: str = "u1", **extra) -> PushRequest:
    return push_request({"users": [user], "data": {"n": 1}, **extra})


def ref(client: ApiClient) -> ClientRef:
    return ClientRef(pk=client.pk, name=client.name, key_hash=client.key_hash)


class CountingDb:
    """The node's ``db`` seam, counting the calls and what the relay had at each."""

    def __init__(self, submitted: list) -> None:
        self.submitted = submitted
        self.calls = 0
        self.seen_before: list[int] = []

    async def __call__(self, fn, *args):
        self.calls += 1
        self.seen_before.append(len(self.submitted))
        return await run_db(fn, *args)


def make_writer(db=None) -> tuple[PushWriter, list]:
    submitted: list = []
    w = PushWriter(db=db or run_db, submit=submitted.append, node_id="n1")
    w.clock = lambda: NOW
    return w, submitted


async def make_client(name: str = "billing") -> ClientRef:
    client, _ = await sync_to_async(services.api_client_create)(name=name)
    return ref(client)


async def test_concurrent_requests_share_one_transaction():
    submitted: list = []
    db = CountingDb(submitted)
    w = PushWriter(db=db, submit=submitted.append, node_id="n1")
    client = await make_client()
    results = await asyncio.gather(
        w.write(client=client, reqs=[req("a")]),
        w.write(client=client, reqs=[req("b"), req("c", topic="t", ttl=30)]),
        w.write(client=None, reqs=[push_request({"broadcast": True, "data": [1]})]),
    )
    assert db.calls == 1 and w.commits == 1 and w.stored == 4
    assert db.seen_before == [0], "nothing reaches the relay before the commit"
    messages = [m for group in results for m in group]
    assert [m.users for m in messages] == [("a",), ("b",), ("c",), None]
    assert len({m.id for m in messages}) == 4
    assert submitted == messages
    rows = {log.id: log async for log in PushLog.objects.all()}
    assert set(rows) == {m.id for m in messages}
    c = rows[messages[2].id]
    assert (c.client_id, c.status, c.users, c.target_count, c.topic, c.ttl_s, c.data_json,
            c.payload_bytes, c.accepted_node, c.idempotency_key, c.error) == (
        client.pk, PushStatus.ACCEPTED, ["c"], 1, "t", 30, '{"n":1}', 7, "n1", None, "")
    assert c.expires_at == c.created_at + timedelta(seconds=30)
    assert messages[2].accepted_ms == int(c.created_at.timestamp() * 1000)
    assert messages[2].expires_ms == int(c.expires_at.timestamp() * 1000)
    everyone = rows[messages[3].id]
    assert (everyone.broadcast, everyone.users, everyone.target_count, everyone.client_id) == (
        True, [], 0, None)


async def test_requests_arriving_during_a_commit_form_the_next_group():
    gate = asyncio.Event()
    calls: list[int] = []

    async def slow_db(fn, *args):
        calls.append(sum(len(reqs) for _, reqs in args[0]))
        if len(calls) == 1:
            await gate.wait()
        return await run_db(fn, *args)

    w, _ = make_writer(slow_db)
    first = asyncio.create_task(w.write(client=None, reqs=[req("a")]))
    await asyncio.sleep(0.01)  # the first group is in its transaction
    later = [asyncio.create_task(w.write(client=None, reqs=[req(f"u{i}")])) for i in range(5)]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(first, *later)
    assert calls == [1, 5]
    assert await PushLog.objects.acount() == 6


async def test_a_group_is_bounded_by_rows_but_never_splits_a_request():
    w, _ = make_writer()
    w.max_rows = 3
    sizes: list[int] = []
    real_db = w.db

    async def db(fn, *args):
        sizes.append(sum(len(reqs) for _, reqs in args[0]))
        return await real_db(fn, *args)

    w.db = db
    await asyncio.gather(
        w.write(client=None, reqs=[req("a"), req("b")]),
        w.write(client=None, reqs=[req("c"), req("d")]),
        w.write(client=None, reqs=[req(f"e{i}") for i in range(5)]),
    )
    assert sizes == [2, 2, 5]


async def test_a_failed_transaction_answers_503_and_stores_nothing(monkeypatch):
    client = await make_client()
    w, submitted = make_writer()
    # The client check and the insert both run; the insert fails: nothing of it may stay.
    monkeypatch.setattr(writer, "insert_sql", lambda: "INSERT INTO no_such_table VALUES (%s)")
    results = await asyncio.gather(
        w.write(client=client, reqs=[req("a")]), w.write(client=None, reqs=[req("b")]),
        return_exceptions=True,
    )
    for result in results:
        assert isinstance(result, PushUnavailable)
        assert error_parts(result)[:2] == (503, {"error": "unavailable",
                                                 "detail": result.detail})
    assert await PushLog.objects.acount() == 0
    assert submitted == []
    # The writer recovers with the database.
    monkeypatch.undo()
    (message,) = await w.write(client=None, reqs=[req("c")])
    assert await PushLog.objects.filter(id=message.id).aexists()


async def test_a_database_that_is_down_answers_503():
    async def down(fn, *args):
        raise DatabaseError("connection refused")

    w, submitted = make_writer(down)
    with pytest.raises(PushUnavailable) as caught:
        await w.write(client=None, reqs=[req()])
    assert caught.value.code == "unavailable" and "DatabaseError" in caught.value.detail
    assert submitted == []


async def test_revoked_clients_are_refused_in_the_commit_and_others_stored():
    active = await make_client("active")
    off = await make_client("off")
    rotated = await make_client("rotated")
    gone = await make_client("gone")
    await ApiClient.objects.filter(pk=off.pk).aupdate(is_active=False)
    row = await ApiClient.objects.aget(pk=rotated.pk)
    await sync_to_async(services.api_client_rotate)(client=row)
    await ApiClient.objects.filter(pk=gone.pk).adelete()

    w, submitted = make_writer()
    results = await asyncio.gather(
        *(w.write(client=c, reqs=[req()]) for c in (active, off, rotated, gone)),
        return_exceptions=True,
    )
    assert isinstance(results[0], list) and len(results[0]) == 1
    assert isinstance(results[1], ClientRevoked) and results[1].deactivated
    assert isinstance(results[2], ClientRevoked) and not results[2].deactivated
    assert isinstance(results[3], ClientRevoked) and not results[3].deactivated
    assert w.commits == 1
    assert [log.client_id async for log in PushLog.objects.all()] == [active.pk]
    assert submitted == results[0]


async def test_a_cancelled_request_is_not_stored():
    w, _ = make_writer()
    cancelled = asyncio.create_task(w.write(client=None, reqs=[req("gone")]))
    kept = asyncio.create_task(w.write(client=None, reqs=[req("kept")]))
    await asyncio.sleep(0)  # both queued; the group starts on the next turn
    cancelled.cancel()
    (message,) = await kept
    assert [log.users async for log in PushLog.objects.all()] == [["kept"]]
    assert message.users == ("kept",)


async def test_close_waits_for_the_queued_writes_then_refuses():
    w, submitted = make_writer()
    pending = asyncio.create_task(w.write(client=None, reqs=[req()]))
    await asyncio.sleep(0)
    await w.close()
    assert pending.done() and len(submitted) == 1
    with pytest.raises(PushUnavailable) as caught:
        await w.write(client=None, reqs=[req()])
    assert caught.value.code == "unavailable"
    w.reopen()
    assert len(await w.write(client=None, reqs=[req()])) == 1


async def test_keyed_pushes_must_go_through_store_keyed():
    w, _ = make_writer()
    with pytest.raises(AssertionError):
        await w.write(client=None, reqs=[req(idempotency_key="k")])


async def test_store_group_rows_read_back_like_the_per_request_path():
    """The raw INSERT and the ORM path store the same values, so admin, selectors and the
    relay read both alike."""
    client = await make_client()
    row = await ApiClient.objects.aget(pk=client.pk)
    body = {"users": ["u1", "u2"], "data": {"x": "é"}, "topic": "news", "ttl": 90}
    (messages,) = await run_db(store_group, [(client, [push_request(body)])], NOW, "n1")
    (ours,) = messages
    assert len(ours.id) == 32 and ours.id.startswith(f"{int(NOW * 1000):012x}")
    int(ours.id, 16)
    theirs, _ = await sync_to_async(services.push_create)(
        client=row, req=push_request(body), submit=lambda m: None)
    a = await PushLog.objects.aget(id=ours.id)
    fields = [f.attname for f in PushLog._meta.concrete_fields
              if f.attname not in ("id", "created_at", "expires_at", "accepted_node")]
    assert {f: getattr(a, f) for f in fields} == {f: getattr(theirs, f) for f in fields}
    assert a.expires_at - a.created_at == theirs.expires_at - theirs.created_at
    assert ours == services.push_message(a)
    assert await PushLog.objects.filter(users_contain_q("u2")).acount() == 2


def test_columns_cover_the_model():
    assert set(writer.COLUMNS) == {f.attname for f in PushLog._meta.concrete_fields}


async def test_store_keyed_checks_the_client_and_keeps_idempotency():
    client = await make_client()
    committed: list = []
    key_req = req(idempotency_key="order-1")
    first = await run_db(store_keyed, client, [key_req], committed.append, 0)
    again = await run_db(store_keyed, client, [key_req, req()], committed.append, 0)
    (log, created), = first
    assert created
    assert [(x.id, c) for x, c in again[:1]] == [(log.id, False)]
    assert again[1][1] is True
    assert [m.id for m in committed] == [log.id, again[1][0].id]
    assert all(isinstance(m, PushMessage) for m in committed)
    await ApiClient.objects.filter(pk=client.pk).aupdate(is_active=False)
    refused = await run_db(store_keyed, client, [req()], committed.append, 0)
    assert isinstance(refused, ClientRevoked) and refused.deactivated
    assert await PushLog.objects.acount() == 2


# --- one bad row never fails the others (issue #10) -----------------------------------------

def unstorable(user: str = "p") -> PushRequest:
    """A push that validation would refuse, as if one of its checks were missing: the
    database refuses its topic (not UTF-8), so only the insert finds out."""
    return dataclasses.replace(req(user), topic="\ud800")


async def test_a_row_the_database_refuses_fails_alone_and_the_rest_commit():
    client = await make_client()
    other = await make_client("shop")
    w, submitted = make_writer()
    alone, batch, broadcast = await asyncio.gather(
        w.write(client=client, reqs=[req("a")]),
        w.write(client=other, reqs=[req("b"), unstorable(), req("c"), unstorable("q")]),
        w.write(client=None, reqs=[push_request({"broadcast": True, "data": 1})]),
    )
    for bad in (batch[1], batch[3]):
        assert isinstance(bad, RequestInvalid)
        assert (bad.status, bad.code) == (400, "unstorable")
        bad.detail.encode()
    good = [alone[0], batch[0], batch[2], broadcast[0]]
    assert all(isinstance(m, PushMessage) for m in good)
    assert [m.users for m in good] == [("a",), ("b",), ("c",), None]
    assert {log.id async for log in PushLog.objects.all()} == {m.id for m in good}
    assert submitted == good
    assert w.stored == 4


async def test_a_group_of_only_bad_rows_stores_nothing_and_the_writer_goes_on():
    w, submitted = make_writer()
    (bad,) = await w.write(client=None, reqs=[unstorable()])
    assert isinstance(bad, RequestInvalid) and bad.status == 400
    assert await PushLog.objects.acount() == 0 and submitted == []
    (message,) = await w.write(client=None, reqs=[req("later")])
    assert isinstance(message, PushMessage)


async def test_a_database_failure_during_isolation_still_answers_503_for_all(monkeypatch):
    # The group fails on a bad row; the retry then finds the database itself gone.
    real = writer._insert_rows
    calls: list[int] = []

    def flaky(cursor, rows):
        calls.append(len(rows))
        if len(calls) == 1:
            return real(cursor, rows)
        raise OperationalError("database is locked")

    monkeypatch.setattr(writer, "_insert_rows", flaky)
    w, submitted = make_writer()
    results = await asyncio.gather(
        w.write(client=None, reqs=[req("a"), unstorable()]), w.write(client=None, reqs=[req()]),
        return_exceptions=True,
    )
    for result in results:
        assert isinstance(result, PushUnavailable) and result.code == "unavailable"
    assert await PushLog.objects.acount() == 0 and submitted == []


def test_push_ids_increase_within_a_millisecond_and_across_calls():
    """A replay sorts by id: pushes one node accepts in one millisecond keep their order."""
    from push_app.services import new_push_id, new_push_ids

    ids = new_push_ids(1_800_000_000_000, 500) + new_push_ids(1_800_000_000_000, 3)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    later = new_push_id(1_800_000_000.001)
    assert later > ids[-1]
    # A clock that steps back a little does not make ids go backwards in this process.
    assert new_push_id(1_800_000_000.0) > later
