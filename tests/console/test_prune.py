"""``manage.py prunegateway``: deletes only what is past retention."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from push_app.models import ApiRejections, PushDelivery, PushLog, PushRecipient, PushStatus
from sessions_app.models import Node, SessionRecord
from tests.support.console import make_node, make_push, make_session

pytestmark = pytest.mark.django_db


@pytest.fixture
def history():
    now = timezone.now()
    alive = make_node("alive")
    gone = make_node("gone", alive=False)
    Node.objects.filter(id="gone").update(last_seen=now - timedelta(days=30))
    recent = make_node("recent-dead", alive=False)
    rows = {
        "old_push": make_push(["u"], age=timedelta(days=10), delivered={"alive": (1, 1)}),
        "old_failed": make_push(["u"], age=timedelta(days=10), status=PushStatus.FAILED),
        "old_waiting": make_push(["u"], age=timedelta(days=10), status=PushStatus.ACCEPTED),
        "new_push": make_push(["u"], age=timedelta(days=2), delivered={"alive": (1, 0)}),
    }
    old_closed = make_session("old-closed", "u", alive, closed=True, close_code=1000)
    SessionRecord.objects.filter(id="old-closed").update(closed_at=now - timedelta(days=10))
    make_session("new-closed", "u", alive, closed=True, close_code=1000)
    make_session("old-open", "u", alive, age=timedelta(days=20))
    make_session("on-gone", "u", gone, closed=True)
    make_session("on-recent", "u", recent)
    return rows, old_closed


def run(*args: str) -> str:
    out = StringIO()
    call_command("prunegateway", *args, stdout=out)
    return out.getvalue()


def test_prune_deletes_only_old_rows(history):
    rows, _ = history
    out = run()
    assert ("deleted: 2 push log(s) created more than 7 d ago (1 delivery row(s), "
            "0 recipient row(s), 0 rejection count(s))" in out)
    assert set(PushLog.objects.values_list("id", flat=True)) == {
        rows["old_waiting"].id, rows["new_push"].id}  # an accepted push is never dropped
    assert list(PushDelivery.objects.values_list("push_id", flat=True)) == [rows["new_push"].id]
    assert set(SessionRecord.objects.values_list("id", flat=True)) == {
        "new-closed", "old-open", "on-recent"}
    assert set(Node.objects.values_list("id", flat=True)) == {"alive", "recent-dead"}


def test_dry_run_deletes_nothing(history):
    out = run("--dry-run")
    assert "would delete: 2 push log(s)" in out and "1 node(s)" in out
    assert PushLog.objects.count() == 4 and Node.objects.count() == 3


def test_days_from_options_and_settings(history):
    run("--push-days", "1", "--session-days", "0", "--node-days", "0")
    assert PushLog.objects.count() == 1  # only the accepted one is left
    assert SessionRecord.objects.count() == 5 and Node.objects.count() == 3
    with override_settings(GATEWAY_RETENTION_PUSH_DAYS=0, GATEWAY_RETENTION_SESSION_DAYS=0):
        assert "retention is off" in run()
    with override_settings(GATEWAY_RETENTION_SESSION_DAYS=1):
        run("--node-days", "0")
    assert set(SessionRecord.objects.values_list("id", flat=True)) == {
        "new-closed", "old-open", "on-recent", "on-gone"}  # only old-closed was past 1 day


def test_negative_days_are_refused(db):
    with pytest.raises(CommandError, match="--push-days must be 0 or more"):
        run("--push-days", "-1")


def test_old_rejection_counts_go_with_old_push_logs(db):
    now = timezone.now()
    for age_days in (10, 2):
        ApiRejections.objects.create(node_id="n1", minute=now - timedelta(days=age_days),
                                     total=3, s400=3)
    assert "1 rejection count(s)" in run("--dry-run")
    assert ApiRejections.objects.count() == 2
    assert "1 rejection count(s)" in run()
    assert [r.minute.date() for r in ApiRejections.objects.all()] == [
        (now - timedelta(days=2)).date()]


def test_a_kept_push_goes_with_its_recipients_once_expired_never_before(db):
    now = timezone.now()
    # Retention (1 d) shorter than the ttl (3 d): a user may still connect for this one.
    waiting = make_push(["u1", "u2"], age=timedelta(days=2), ttl_s=3 * 86400,
                        expires_at=now + timedelta(days=1))
    expired = make_push(["u1"], age=timedelta(days=2), ttl_s=3600,
                        expires_at=now - timedelta(days=2) + timedelta(hours=1))
    for log in (waiting, expired):
        PushRecipient.objects.bulk_create(
            PushRecipient(push=log, app="default", user_id=u, state="pending", kept=True,
                          expires_at=log.expires_at) for u in log.users)
    assert "1 push log(s)" in run("--push-days", "1", "--dry-run")
    out = run("--push-days", "1")
    assert "1 push log(s) created more than 1 d ago" in out and "1 recipient row(s)" in out
    assert list(PushLog.objects.values_list("id", flat=True)) == [waiting.id]
    assert sorted(PushRecipient.objects.values_list("user_id", flat=True)) == ["u1", "u2"]


def test_before_replaces_the_days_for_every_kind(history):
    rows, _ = history
    later = (timezone.now() + timedelta(minutes=1)).isoformat()
    out = run("--before", later)
    assert f"3 push log(s) created before {later}" in out
    assert list(PushLog.objects.values_list("id", flat=True)) == [rows["old_waiting"].id]
    # Closed sessions go, open ones stay; nodes still go by --node-days (a live one stays).
    assert set(SessionRecord.objects.values_list("id", flat=True)) == {"old-open", "on-recent"}
    assert set(Node.objects.values_list("id", flat=True)) == {"alive", "recent-dead"}
    with pytest.raises(CommandError, match="give the offset"):
        run("--before", "2026-11-30T12:00:00")
    with pytest.raises(CommandError, match="not an ISO 8601"):
        run("--before", "yesterday")
