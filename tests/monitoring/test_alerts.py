"""``runalerts``' engine against the database with an injected clock: each rule fires on its
fault and resolves when it ends, notifies once per episode through the webhook (a local
HTTP sink) and mail, retries a channel that failed, and never notifies twice."""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from monitoring import runner
from monitoring.engine import AlertEngine
from monitoring.models import Alert, AlertNotification
from monitoring.notifiers import BaseNotifier, alert_payload, configured_notifiers
from monitoring.rules import BaseRule, Finding, percentile
from push_app.models import PushDelivery, PushLog, PushStatus
from sessions_app.models import Node, SessionRecord
from tests.monitoring.support import WebhookSink

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def node(node_id: str, *, seen: datetime, stopped: datetime | None = None,
         connections: int = 0) -> Node:
    return Node.objects.update_or_create(id=node_id, defaults={
        "started_at": NOW - s(3600), "last_seen": seen, "stopped_at": stopped,
        "connections": connections,
    })[0]


def push(push_id: str, *, created: datetime, status: str = PushStatus.PUBLISHED,
         users: list[str] | None = None, broadcast: bool = False, accepted_node: str = "n1",
         expires: datetime | None = None) -> PushLog:
    return PushLog.objects.create(
        id=push_id, status=status, users=users or [], broadcast=broadcast, data_json="1",
        accepted_node=accepted_node, created_at=created, expires_at=expires,
    )


def delivered(push_id: str, node_id: str, *, at: datetime) -> None:
    row = PushDelivery.objects.create(push_id=push_id, node_id=node_id, delivered=1)
    PushDelivery.objects.filter(pk=row.pk).update(updated_at=at)


def connected(session_id: str, user: str, node_id: str, *, at: datetime) -> None:
    SessionRecord.objects.create(id=session_id, user_id=user, node_id=node_id,
                                 connected_at=at, last_seen=at)


class Recorder(BaseNotifier):
    name = "recorder"

    def __init__(self, **config) -> None:
        super().__init__(**config)
        self.sent: list[tuple[str, str, str]] = []

    def send(self, alert: Alert, *, kind: str) -> None:
        self.sent.append((kind, alert.rule, alert.subject))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def engine(recorder: Recorder) -> AlertEngine:
    return AlertEngine(notifiers=[recorder])


def open_alerts(rule: str | None = None) -> set[tuple[str, str]]:
    alerts = Alert.objects.filter(resolved_at__isnull=True)
    if rule is not None:
        alerts = alerts.filter(rule=rule)
    return set(alerts.values_list("rule", "subject"))


# --- each rule ---------------------------------------------------------------------------

def test_node_down_fires_once_and_resolves_when_it_beats_again(engine, recorder) -> None:
    node("n1", seen=NOW - s(5))
    node("n2", seen=NOW - s(3600), stopped=NOW - s(3600))  # stopped cleanly: not down
    assert engine.run_once(NOW).fired == []
    report = engine.run_once(NOW + s(60))
    assert [str(a) for a in report.fired] == ["GatewayNodeDown n1"]
    assert recorder.sent == [("firing", "GatewayNodeDown", "n1")]
    for later in (90, 120, 600):  # still down: no repeat
        assert engine.run_once(NOW + s(later)).fired == []
    assert len(recorder.sent) == 1
    alert = Alert.objects.get()
    assert alert.value == pytest.approx(605) and alert.last_seen_at == NOW + s(600)
    node("n1", seen=NOW + s(700))
    report = engine.run_once(NOW + s(701))
    assert [str(a) for a in report.resolved] == ["GatewayNodeDown n1"]
    assert recorder.sent[-1] == ("resolved", "GatewayNodeDown", "n1")
    assert Alert.objects.get().resolved_at == NOW + s(701)
    # A second failure is a new episode, notified again.
    engine.run_once(NOW + s(800))
    assert recorder.sent[-1] == ("firing", "GatewayNodeDown", "n1")
    assert Alert.objects.count() == 2


@override_settings(GATEWAY_ALERT_BACKLOG_AGE_S=60, GATEWAY_ALERT_BACKLOG_MIN=2)
def test_relay_backlog_fires_per_accepting_node(engine, recorder) -> None:
    push("a1", created=NOW - s(120), status=PushStatus.ACCEPTED)
    push("a2", created=NOW - s(90), status=PushStatus.ACCEPTED)
    push("a3", created=NOW - s(10), status=PushStatus.ACCEPTED)  # young: not backlog yet
    push("b1", created=NOW - s(120), status=PushStatus.ACCEPTED, accepted_node="n2")  # < min
    engine.run_once(NOW)
    assert open_alerts() == {("GatewayRelayBacklog", "n1")}
    alert = Alert.objects.get()
    assert alert.value == 2 and alert.details["oldest_age_s"] == 120
    PushLog.objects.filter(id__in=["a1", "a2"]).update(status=PushStatus.PUBLISHED)
    engine.run_once(NOW + s(5))
    assert open_alerts() == set()
    assert recorder.sent == [("firing", "GatewayRelayBacklog", "n1"),
                             ("resolved", "GatewayRelayBacklog", "n1")]


@override_settings(GATEWAY_ALERT_WINDOW_S=300)
def test_failed_pushes_fire_for_the_window(engine) -> None:
    push("f1", created=NOW - s(100), status=PushStatus.FAILED, expires=NOW - s(40))
    push("f0", created=NOW - s(9000), status=PushStatus.FAILED, expires=NOW - s(8000))
    engine.run_once(NOW)
    assert open_alerts() == {("GatewayPushesFailed", "n1")}
    assert Alert.objects.get().value == 1
    engine.run_once(NOW + s(200))
    assert open_alerts() == {("GatewayPushesFailed", "n1")}
    engine.run_once(NOW + s(300))  # the failure left the window
    assert open_alerts() == set()


@override_settings(GATEWAY_ALERT_UNDELIVERED_AGE_S=30, GATEWAY_ALERT_WINDOW_S=300)
def test_delivery_stalled_names_the_node_that_did_not_deliver(engine) -> None:
    node("n1", seen=NOW)
    node("n2", seen=NOW)
    node("dead", seen=NOW - s(3600))
    connected("s1", "u1", "n1", at=NOW - s(600))
    connected("s2", "u1", "n2", at=NOW - s(600))
    connected("s3", "u2", "n2", at=NOW - s(10))  # connected after the push: no claim on it
    connected("s4", "u3", "dead", at=NOW - s(600))  # a dead node is NodeDown's business
    push("p1", created=NOW - s(60), users=["u1", "u2", "u3", "offline"])
    delivered("p1", "n1", at=NOW - s(59))
    push("p2", created=NOW - s(5), users=["u1"])  # too young to judge
    engine.run_once(NOW)
    assert open_alerts("GatewayDeliveryStalled") == {("GatewayDeliveryStalled", "n2")}
    assert ("GatewayNodeDown", "dead") in open_alerts()
    alert = Alert.objects.get(rule="GatewayDeliveryStalled")
    assert alert.details == {"undelivered": 1, "examples": ["p1"]}
    delivered("p1", "n2", at=NOW + s(1))
    engine.run_once(NOW + s(2))
    assert open_alerts("GatewayDeliveryStalled") == set()


@override_settings(GATEWAY_ALERT_UNDELIVERED_AGE_S=30)
def test_delivery_stalled_for_a_broadcast(engine) -> None:
    node("n1", seen=NOW)
    connected("s1", "anyone", "n1", at=NOW - s(600))
    push("b1", created=NOW - s(60), broadcast=True)
    engine.run_once(NOW)
    assert open_alerts() == {("GatewayDeliveryStalled", "n1")}


@override_settings(GATEWAY_ALERT_LATENCY_P99_MS=5000, GATEWAY_ALERT_WINDOW_S=300)
def test_push_latency_p99_per_node(engine) -> None:
    for i in range(50):
        push(f"fast{i}", created=NOW - s(100))
        delivered(f"fast{i}", "n1", at=NOW - s(99.5))
        delivered(f"fast{i}", "n2", at=NOW - s(99.5) if i else NOW - s(88))
    engine.run_once(NOW)
    assert open_alerts() == {("GatewayPushLatencyHigh", "n2")}
    assert Alert.objects.get().value == 12.0
    engine.run_once(NOW + s(250))  # the slow push left the window
    assert open_alerts() == set()


@override_settings(GATEWAY_CONNECTIONS_CEILING=100, GATEWAY_ALERT_CONNECTIONS_PERCENT=90)
def test_connections_near_the_ceiling(engine) -> None:
    node("n1", seen=NOW, connections=95)
    node("n2", seen=NOW, connections=40)
    node("gone", seen=NOW - s(3600), connections=99)
    engine.run_once(NOW)
    assert open_alerts() == {("GatewayConnectionsNearCeiling", "n1"), ("GatewayNodeDown", "gone")}
    node("n1", seen=NOW + s(5), connections=50)
    engine.run_once(NOW + s(6))
    assert open_alerts() == {("GatewayNodeDown", "gone")}
    with override_settings(GATEWAY_CONNECTIONS_CEILING=0):
        node("n1", seen=NOW + s(7), connections=10_000)
        engine.run_once(NOW + s(8))
        assert ("GatewayConnectionsNearCeiling", "n1") not in open_alerts()


def test_percentile() -> None:
    assert percentile([], 0.99) == 0.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0


# --- the engine --------------------------------------------------------------------------

class Flaky(BaseRule):
    name = "Flaky"

    def __init__(self) -> None:
        self.broken = False

    def evaluate(self, *, now, cfg):
        if self.broken:
            raise RuntimeError("database went away")
        return [Finding(subject="", summary="always")]


def test_a_rule_that_cannot_be_evaluated_keeps_its_alerts(recorder) -> None:
    flaky = Flaky()
    engine = AlertEngine(rules=[flaky], notifiers=[recorder])
    engine.run_once(NOW)
    flaky.broken = True
    report = engine.run_once(NOW + s(30))
    assert report.rule_errors == ["Flaky"] and "Flaky" in str(report)
    assert open_alerts() == {("Flaky", "")}
    assert recorder.sent == [("firing", "Flaky", "")]


def test_a_second_engine_does_not_notify_again(recorder) -> None:
    other = Recorder()
    AlertEngine(rules=[Flaky()], notifiers=[recorder]).run_once(NOW)
    AlertEngine(rules=[Flaky()], notifiers=[other]).run_once(NOW + s(1))
    assert recorder.sent == [("firing", "Flaky", "")]
    assert other.sent == []


def test_a_notice_claimed_by_another_sender_is_left_to_it(recorder) -> None:
    engine = AlertEngine(rules=[Flaky()], notifiers=[recorder])
    alert = Alert.objects.create(rule="Flaky", subject="", severity="warning", summary="x",
                                 fired_at=NOW, last_seen_at=NOW)
    AlertNotification.objects.create(alert=alert, kind="firing", channel="recorder",
                                     created_at=NOW, claimed_until=NOW + s(60))
    engine.run_once(NOW + s(1))
    assert recorder.sent == []
    engine.run_once(NOW + s(61))  # the claim ran out: the sender died; send it
    assert recorder.sent == [("firing", "Flaky", "")]


def test_webhook_and_mail_notices(settings) -> None:
    sink = WebhookSink()
    try:
        settings.GATEWAY_ALERT_WEBHOOK_URL = sink.url
        settings.GATEWAY_ALERT_EMAIL = True
        settings.ADMINS = [("ops", "ops@example.com")]
        engine = AlertEngine()
        assert [n.name for n in engine.notifiers] == ["webhook", "email"]
        node("n1", seen=NOW - s(600))
        engine.run_once(NOW)
        engine.run_once(NOW + s(30))
        node("n1", seen=NOW + s(60))
        engine.run_once(NOW + s(61))
        assert sink.notices() == [("firing", "GatewayNodeDown", "n1"),
                                  ("resolved", "GatewayNodeDown", "n1")]
        body = sink.received[1]
        assert body["version"] == "4" and body["status"] == "resolved"
        (item,) = body["alerts"]
        assert item["labels"] == {"alertname": "GatewayNodeDown", "severity": "critical",
                                  "source": "runalerts", "node": "n1"}
        assert item["startsAt"] == "2026-05-01T11:59:00Z" or item["startsAt"].startswith("2026")
        assert item["endsAt"] == "2026-05-01T12:01:01Z"
        assert "n1" in item["annotations"]["summary"]
        assert [m.subject for m in mail.outbox] == [
            "[Django] [FIRING] GatewayNodeDown on n1", "[Django] [RESOLVED] GatewayNodeDown on n1"]
        assert mail.outbox[0].to == ["ops@example.com"]
        assert "docs/monitoring.md" in mail.outbox[0].body
    finally:
        sink.close()


def test_a_failing_webhook_is_retried_without_repeating_the_others(settings) -> None:
    sink = WebhookSink()
    try:
        settings.GATEWAY_ALERT_WEBHOOK_URL = sink.url
        settings.GATEWAY_ALERT_EMAIL = True
        settings.ADMINS = [("ops", "ops@example.com")]
        engine = AlertEngine()
        sink.status = 500
        node("n1", seen=NOW - s(600))
        report = engine.run_once(NOW)
        assert (report.sent, report.failed) == (1, 1)
        notice = AlertNotification.objects.get(channel="webhook")
        assert (notice.attempts, notice.sent_at, notice.error) == (
            1, None, "NotificationFailed: webhook answered 500")
        sink.status = 200
        report = engine.run_once(NOW + s(30))
        assert (report.sent, report.failed) == (1, 0)
        assert [n[0] for n in sink.notices()] == ["firing", "firing"]  # one failed, one taken
        assert len(mail.outbox) == 1
        assert AlertNotification.objects.get(channel="webhook").sent_at == NOW + s(30)
    finally:
        sink.close()


def test_an_unreachable_webhook_is_an_error_not_a_crash(settings) -> None:
    settings.GATEWAY_ALERT_WEBHOOK_URL = "http://127.0.0.1:9/nothing-listens"
    engine = AlertEngine(rules=[Flaky()])
    report = engine.run_once(NOW)
    assert report.failed == 1
    assert "unreachable" in AlertNotification.objects.get().error


def test_extra_notifiers_from_settings(settings) -> None:
    settings.GATEWAY_ALERT_NOTIFIERS = {
        "ops-chat": {"BACKEND": "tests.monitoring.test_alerts.Recorder", "CONFIG": {"room": "x"}}
    }
    (extra,) = configured_notifiers()
    assert isinstance(extra, Recorder) and extra.name == "ops-chat"
    assert extra.config == {"room": "x"}


def test_payload_of_a_cluster_alert_has_no_node() -> None:
    alert = Alert(pk=7, rule="Flaky", subject="", severity="warning", summary="s",
                  fired_at=NOW, last_seen_at=NOW)
    body = alert_payload(alert, kind="firing")
    assert "node" not in body["alerts"][0]["labels"]
    assert body["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"


# --- the command and the loop ------------------------------------------------------------

def test_runalerts_once_prints_the_round(settings) -> None:
    settings.GATEWAY_ALERT_WEBHOOK_URL = ""
    node("n1", seen=NOW - s(3600))
    out, err = io.StringIO(), io.StringIO()
    call_command("runalerts", "--once", stdout=out, stderr=err)
    assert "firing 1; new: GatewayNodeDown n1" in out.getvalue()
    assert "no alert channel configured" in err.getvalue()
    out = io.StringIO()
    call_command("runalerts", "--once", stdout=out, stderr=io.StringIO())
    assert "firing 1; new: none; resolved: none" in out.getvalue()


def test_runalerts_says_which_database_and_broker_it_reads(settings) -> None:
    settings.GATEWAY_ALERT_WEBHOOK_URL = ""
    err = io.StringIO()
    call_command("runalerts", "--once", stdout=io.StringIO(), stderr=err)
    first = err.getvalue().splitlines()[0]
    assert first.startswith(f"database {connection.vendor}")
    assert "; broker " in first
    if connection.vendor == "sqlite":
        # No node has written here: a terminal without the cluster's DATABASE_URL.
        assert "warning: this database is SQLite and no gateway node" in err.getvalue()
    node("n1", seen=NOW)
    err = io.StringIO()
    call_command("runalerts", "--once", stdout=io.StringIO(), stderr=err)
    assert "warning: this database is SQLite" not in err.getvalue()


@pytest.mark.django_db(transaction=True)
def test_the_loop_runs_rounds_until_stopped(recorder) -> None:
    engine = AlertEngine(rules=[Flaky()], notifiers=[recorder])
    stop = threading.Event()
    rounds = []

    def on_round(report) -> None:
        rounds.append(report)
        if len(rounds) == 3:
            stop.set()

    thread = threading.Thread(target=runner.run, kwargs=dict(
        engine=engine, once=False, interval_s=0.01, stop=stop, on_round=on_round))
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert len(rounds) == 3
    assert recorder.sent == [("firing", "Flaky", "")]


def test_alerts_are_recorded_in_admin(admin_client, recorder) -> None:
    AlertEngine(rules=[Flaky()], notifiers=[recorder]).run_once(NOW)
    alert = Alert.objects.get()
    listing = admin_client.get("/admin/monitoring/alert/")
    assert listing.status_code == 200
    assert b"Flaky" in listing.content
    page = admin_client.get(f"/admin/monitoring/alert/{alert.pk}/change/")
    assert page.status_code == 200
    assert b"recorder" in page.content  # the notice, inline


def test_checks_warn_about_mail_without_recipients(settings) -> None:
    from monitoring.checks import alert_channels

    settings.GATEWAY_ALERT_EMAIL = True
    settings.ADMINS = []
    settings.GATEWAY_ALERT_WEBHOOK_URL = "ftp://nope"
    assert [m.id for m in alert_channels()] == ["monitoring.W001", "monitoring.W002"]
    settings.ADMINS = [("", "ops@example.com")]
    settings.GATEWAY_ALERT_WEBHOOK_URL = "https://hooks.example.com/x"
    assert alert_channels() == []
