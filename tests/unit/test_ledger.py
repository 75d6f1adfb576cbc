from __future__ import annotations

import pytest
from django.utils import timezone

from push_app.ledger import DeliveryLedger
from push_app.models import PushDelivery, PushLog, PushStatus


def make_log(push_id: str, status: str = PushStatus.PUBLISHED) -> PushLog:
    return PushLog.objects.create(id=push_id, status=status, users=["u1"], target_count=1,
                                  data_json="{}", created_at=timezone.now())


def test_delivered_and_acked_totals():
    ledger = DeliveryLedger(node_id="n1")
    ledger.delivered("p1", 2)
    ledger.delivered("p1", 1)
    assert ledger.acked("p1") is True
    assert ledger.take() == {"p1": (3, 1)}
    assert ledger.take() == {}
    assert ledger.acked("p1") is True
    assert ledger.take() == {"p1": (3, 2)}


def test_ack_refused_for_unknown_push_and_beyond_delivered():
    ledger = DeliveryLedger(node_id="n1")
    assert ledger.acked("never") is False
    ledger.delivered("p1", 2)
    assert [ledger.acked("p1") for _ in range(3)] == [True, True, False]
    assert ledger.take() == {"p1": (2, 2)}
    assert ledger.acked("p1") is False
    assert ledger.take() == {}


def test_oldest_pushes_are_forgotten_past_max_tracked():
    ledger = DeliveryLedger(node_id="n1")
    ledger.max_tracked = 2
    for push_id in ("p1", "p2", "p3"):
        ledger.delivered(push_id, 1)
    assert ledger.acked("p1") is False
    assert ledger.acked("p3") is True
    assert ledger.take() == {"p2": (1, 0), "p3": (1, 1)}


def test_untake_marks_totals_changed_again():
    ledger = DeliveryLedger(node_id="n1")
    ledger.delivered("p1", 1)
    changed = ledger.take()
    ledger.delivered("p2", 1)
    ledger.untake(changed)  # that write failed
    assert ledger.take() == {"p1": (1, 0), "p2": (1, 0)}


@pytest.mark.django_db
def test_write_upserts_and_sums_across_nodes():
    make_log("p1")
    make_log("p2", status=PushStatus.ACCEPTED)
    make_log("p3")
    first, second = DeliveryLedger(node_id="n1"), DeliveryLedger(node_id="n2")
    first.delivered("p1", 2)
    first.acked("p1")
    second.delivered("p1", 3)
    second.acked("p1")
    second.acked("p1")
    second.delivered("p2", 1)
    first.write(first.take())
    second.write(second.take())

    p1 = PushLog.objects.get(id="p1")
    assert (p1.delivered, p1.acked, p1.status) == (5, 3, PushStatus.DELIVERED)
    p2 = PushLog.objects.get(id="p2")
    assert (p2.delivered, p2.acked, p2.status) == (1, 0, PushStatus.DELIVERED)
    p3 = PushLog.objects.get(id="p3")
    assert (p3.delivered, p3.acked, p3.status) == (0, 0, PushStatus.PUBLISHED)
    rows = {(d.push_id, d.node_id): (d.delivered, d.acked) for d in PushDelivery.objects.all()}
    assert rows == {("p1", "n1"): (2, 1), ("p1", "n2"): (3, 2), ("p2", "n2"): (1, 0)}

    # Running totals: a later write replaces this node's row instead of adding to it.
    first.acked("p1")
    first.write(first.take())
    first.write({"p1": (2, 2)})  # a repeated flush is harmless
    assert PushDelivery.objects.filter(push_id="p1").count() == 2
    p1.refresh_from_db()
    assert (p1.delivered, p1.acked) == (5, 4)


@pytest.mark.django_db
def test_write_ignores_unknown_pushes_and_keeps_failed_status():
    make_log("failed", status=PushStatus.FAILED)
    ledger = DeliveryLedger(node_id="n1")
    ledger.delivered("ghost", 1)
    ledger.delivered("failed", 1)
    ledger.write(ledger.take())
    assert not PushDelivery.objects.filter(push_id="ghost").exists()
    assert not PushLog.objects.filter(id="ghost").exists()
    failed = PushLog.objects.get(id="failed")
    assert (failed.delivered, failed.status) == (1, PushStatus.FAILED)


@pytest.mark.django_db
def test_write_of_nothing_touches_nothing(django_assert_num_queries):
    with django_assert_num_queries(0):
        DeliveryLedger(node_id="n1").write({})


@pytest.mark.django_db
def test_write_in_chunks_of_pushes(monkeypatch):
    from push_app import ledger as ledger_module

    monkeypatch.setattr(ledger_module, "WRITE_CHUNK", 2)
    for i in range(5):
        make_log(f"p{i}")
    ledger = DeliveryLedger(node_id="n1")
    for i in range(6):  # p5 is unknown
        ledger.delivered(f"p{i}", i + 1)
    ledger.acked("p4")
    ledger.write(ledger.take())
    assert sorted(PushLog.objects.values_list("id", "delivered", "acked", "status")) == [
        (f"p{i}", i + 1, int(i == 4), PushStatus.DELIVERED) for i in range(5)]
    assert PushDelivery.objects.count() == 5


@pytest.mark.django_db
def test_write_without_on_conflict_upserts_through_the_orm(monkeypatch):
    import dataclasses

    from push_app import ledger as ledger_module

    plain = dataclasses.replace(ledger_module._statements(), upsert="")
    monkeypatch.setattr(ledger_module, "_statements", lambda: plain)
    make_log("p1")
    ledger = DeliveryLedger(node_id="n1")
    ledger.delivered("p1", 2)
    ledger.write(ledger.take())
    ledger.delivered("p1", 1)
    ledger.write(ledger.take())
    assert PushLog.objects.get(id="p1").delivered == 3
    assert PushDelivery.objects.get(push_id="p1").delivered == 3
