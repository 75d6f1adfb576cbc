"""Push logs in admin, the user page (is X online, did push Y reach them), test pushes."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.urls import reverse

from console.admin_push import PAYLOAD_PREVIEW_CHARS
from gateway_core.messages import PushMessage
from push_app.models import PushLog, PushStatus
from tests.support.console import make_node, make_push, make_session

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:push_app_pushlog_changelist"


def shown(response) -> set[str]:
    assert response.status_code == 200, response.content[:500]
    return {row.id for row in response.context["cl"].result_list}


def test_search_by_user_push_id_and_idempotency_key(operator):
    both = make_push(["u1", "u2"])
    other = make_push(["u10"])
    keyed = make_push(["U1"], idempotency_key="order-42")
    url = reverse(CHANGELIST)
    assert shown(operator.get(url, {"q": "u1"})) == {both.id}  # not u10, not U1
    assert shown(operator.get(url, {"q": "u10"})) == {other.id}
    assert shown(operator.get(url, {"q": both.id})) == {both.id}
    assert shown(operator.get(url, {"q": "order-42"})) == {keyed.id}


def test_filter_by_status_and_date(operator):
    failed = make_push(["u1"], status=PushStatus.FAILED, error="ttl ran out")
    old = make_push(["u1"], age=timedelta(days=3))
    url = reverse(CHANGELIST)
    assert shown(operator.get(url, {"status__exact": "failed"})) == {failed.id}
    assert shown(operator.get(url, {"created": "7d"})) == {failed.id, old.id}
    recent = shown(operator.get(url, {"created": "24h"}))
    assert failed.id in recent and old.id not in recent


def test_list_columns(operator):
    make_push(["alice", "bob", "carol", "dave"], topic="orders", status=PushStatus.FAILED,
              error="ttl ran out before the broker accepted the push")
    html = operator.get(reverse(CHANGELIST)).content.decode()
    for text in ("alice", "+1", "orders", "7 B", "failed",
                 "ttl ran out", "console"):
        assert text in html, text
    assert "Send a test push" in html


def test_push_detail_shows_payload_and_per_node_deliveries(operator):
    make_node("node-a")
    log = make_push(["alice"], data_json=json.dumps({"order": 42, "items": ["a", "b"]}),
                    delivered={"node-a": (2, 1), "node-gone": (1, 0)})
    page = operator.get(reverse("admin:push_app_pushlog_change", args=[log.id]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "&quot;order&quot;: 42" in html and "\n  &quot;items&quot;: [" in html  # indented
    assert "node-a</a>" in html and 'console-alive">alive<' in html
    assert "node-gone</a>" in html and 'console-gone">gone<' in html
    assert 'name="_save"' not in html


def test_big_payload_is_cut(operator):
    log = make_push(["alice"], data_json=json.dumps({"blob": "x" * (PAYLOAD_PREVIEW_CHARS * 2)}))
    html = operator.get(reverse("admin:push_app_pushlog_change", args=[log.id])).content.decode()
    assert f"cut at {PAYLOAD_PREVIEW_CHARS}" in html
    assert "x" * (PAYLOAD_PREVIEW_CHARS - 100) in html
    assert "x" * PAYLOAD_PREVIEW_CHARS not in html


def test_user_page_answers_online_where_and_did_it_arrive(operator):
    node = make_node("node-a")
    make_session("s1", "alice", node, age=timedelta(minutes=30))
    acked = make_push(["alice"], age=timedelta(minutes=5), delivered={"node-a": (1, 1)})
    crowd = make_push(["alice", "bob"], age=timedelta(minutes=4), delivered={"node-a": (2, 0)})
    before = make_push(["alice"], age=timedelta(hours=2), delivered={})
    make_push(["bob"])

    page = operator.get(reverse("admin:console_user"), {"q": "alice"})
    html = page.content.decode()
    assert page.status_code == 200
    assert "alice is online" in html and "node-a" in html
    verdicts = {o.log.id: o.verdict for o in page.context["pushes"]}
    assert set(verdicts) == {acked.id, crowd.id, before.id}
    assert verdicts[acked.id] == "received: the client acked it"
    assert verdicts[before.id] == "user was offline when it was sent"
    assert "connection(s) of all targets" in verdicts[crowd.id]
    assert "Disconnect all of alice" in html and "Send a test push" in html


def test_user_page_offline_and_push_id_lookup(operator):
    node = make_node("node-a")
    make_session("s1", "bob", node, closed=True, close_code=4010)
    log = make_push(["bob"])
    page = operator.get(reverse("admin:console_user"), {"q": "bob"}).content.decode()
    assert "bob is offline" in page and "4010 disconnected" in page
    nobody = operator.get(reverse("admin:console_user"), {"q": "nobody"}).content.decode()
    assert "Not found" in nobody and "Disconnect all" not in nobody
    assert "Not found" in operator.get(
        reverse("admin:console_user"), {"q": "no such thing!"}).content.decode()
    jump = operator.get(reverse("admin:console_user"), {"q": log.id})
    assert jump.status_code == 302
    assert jump["Location"] == reverse("admin:push_app_pushlog_change", args=[log.id])


def test_send_a_test_push(operator, node, django_capture_on_commit_callbacks):
    url = reverse("admin:push_app_pushlog_test_push")
    assert 'value="alice"' in operator.get(url, {"user": "alice"}).content.decode()
    bad = operator.post(url, {"user": "alice", "topic": "", "payload": "{not json"})
    assert bad.status_code == 200 and "Not JSON" in bad.content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        response = operator.post(url, {"user": "alice", "topic": "console.test",
                                       "payload": '{"hello": "world"}'})
    assert response.status_code == 302
    log = PushLog.objects.get()
    assert response["Location"] == reverse("admin:push_app_pushlog_change", args=[log.id])
    assert log.client is None and log.users == ["alice"] and log.topic == "console.test"
    assert json.loads(log.data_json) == {"hello": "world"}
    [message] = node.relay.pending
    assert isinstance(message, PushMessage) and message.id == log.id
    assert message.users == ("alice",)


def test_the_push_page_answers_did_each_user_get_it_and_ack_it(operator):
    """Per-recipient state (PROTOCOL.md section 6) on the push's page."""
    from push_app.models import PushRecipient
    from push_app.recipients import RecipientLedger

    log = make_push(["u1", "u2", "u3"])
    for user in ("u1", "u2", "u3"):
        PushRecipient.objects.create(push=log, app="default", user_id=user, state="pending",
                                     kept=True)
    ledger = RecipientLedger()
    ledger.delivered(log.id, {"u1": 1, "u2": 2})
    ledger.acked(log.id, "u1")
    ledger.write(ledger.take())
    page = operator.get(reverse("admin:push_app_pushlog_change", args=[log.id])).content.decode()
    assert "1 acked" in page and "1 delivered" in page and "1 pending" in page
    assert page.index(">u1<") < page.index(">u2<") < page.index(">u3<")
