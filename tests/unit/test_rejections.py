"""``push_app.rejections``: refused requests counted in memory, written as increments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from push_app import services
from push_app.models import ApiRejections
from push_app.rejections import RejectionCounter
from push_app.selectors import rejections_since

T0 = datetime(2026, 11, 30, 12, 0, 10, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_counts_per_client_minute_and_status_with_the_last_error():
    clock = Clock()
    counter = RejectionCounter(node_id="n1", clock=clock)
    counter.count(client_id=1, status=400, code="invalid", detail="bad users")
    clock.now += 5
    counter.count(client_id=1, status=429, code="rate_limited", detail="slow down")
    counter.count(client_id=None, status=401, code="unauthorized", detail="x" * 500)
    counter.count(client_id=1, status=503, code="unavailable", detail="not a refusal")
    taken = counter.take()
    minute = int(T0 // 60) * 60
    assert set(taken) == {(1, minute), (None, minute)}
    mine = taken[(1, minute)]
    assert mine.by_status == {400: 1, 429: 1} and mine.total == 2
    assert mine.last is not None and (mine.last.status, mine.last.code) == (429, "rate_limited")
    last = taken[(None, minute)].last
    assert last is not None and len(last.detail) == 200
    assert counter.take() == {}


def test_other_4xx_share_one_slot_and_a_new_minute_a_new_bucket():
    clock = Clock()
    counter = RejectionCounter(node_id="n1", clock=clock)
    counter.count(client_id=1, status=415, code="unsupported_media_type", detail="")
    clock.now += 60
    counter.count(client_id=1, status=405, code="method_not_allowed", detail="")
    taken = counter.take()
    assert len(taken) == 2
    assert all(b.by_status == {0: 1} for b in taken.values())


def test_untake_merges_with_what_was_counted_since():
    clock = Clock()
    counter = RejectionCounter(node_id="n1", clock=clock)
    counter.count(client_id=1, status=400, code="invalid", detail="first")
    taken = counter.take()
    clock.now += 1
    counter.count(client_id=1, status=401, code="unauthorized", detail="second")
    counter.untake(taken)
    (bucket,) = counter.take().values()
    assert bucket.by_status == {400: 1, 401: 1}
    assert bucket.last is not None and bucket.last.detail == "second"


def test_memory_is_bounded():
    counter = RejectionCounter(node_id="n1", clock=Clock())
    counter.max_buckets = 2
    for client_id in range(5):
        counter.count(client_id=client_id, status=400, code="invalid", detail="")
    assert len(counter.take()) == 2


@pytest.mark.django_db
def test_write_adds_increments_per_node_and_reads_back_summed():
    client, _ = services.api_client_create(name="billing")
    clock = Clock()
    n1 = RejectionCounter(node_id="n1", clock=clock)
    n2 = RejectionCounter(node_id="n2", clock=clock)
    n1.count(client_id=client.pk, status=400, code="invalid", detail="one")
    n1.write(n1.take())
    clock.now += 2
    n1.count(client_id=client.pk, status=400, code="invalid", detail="two")
    n1.count(client_id=client.pk, status=413, code="payload_too_large", detail="big")
    n1.write(n1.take())  # the same minute: the row grows
    clock.now += 1
    n2.count(client_id=client.pk, status=429, code="rate_limited", detail="slow")
    n2.count(client_id=None, status=401, code="unauthorized", detail="who?")
    n2.count(client_id=client.pk + 99, status=400, code="invalid", detail="deleted client")
    n2.write(n2.take())
    assert ApiRejections.objects.count() == 3
    row = ApiRejections.objects.get(node_id="n1")
    assert (row.total, row.s400, row.s413, row.last_detail) == (3, 2, 1, "big")

    since = datetime.fromtimestamp(T0, tz=UTC) - timedelta(hours=1)
    billing, unauthenticated = rejections_since(since=since)
    assert (billing.client_name, billing.total) == ("billing", 4)
    assert billing.by_status["400"] == 2 and billing.by_status["429"] == 1
    assert (billing.last_status, billing.last_code) == (429, "rate_limited")
    assert billing.last_error_at == datetime.fromtimestamp(clock.now, tz=UTC)
    assert (unauthenticated.client_id, unauthenticated.total) == (None, 1)
    assert rejections_since(since=since + timedelta(hours=2)) == []
    (only,) = rejections_since(since=since, client_id=None, one_client=True)
    assert only.client_name == "unauthenticated"
