"""``push.settled`` (PROTOCOL.md section 7): when a push settles, what its event says, to
whom it goes, and that it is stored once however many nodes scan. Times are given to each
scan; nothing sleeps."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from django.test import override_settings

from gateway_core import metrics
from push_app.models import PushLog, PushRecipient, PushStatus
from push_app.services import api_client_create
from webhooks import services
from webhooks.models import Endpoint, Event
from webhooks.settled import settle_scan

pytestmark = pytest.mark.django_db

T0 = 1_800_000_000.0
SETTLE = 10


def at(s: float) -> datetime:
    return datetime.fromtimestamp(T0 + s, tz=UTC)


@pytest.fixture
def shop():
    client = api_client_create(name="shop")[0]
    with override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True):
        services.endpoint_create(client=client, req=services.EndpointRequest(
            url="http://127.0.0.1:9/h", events=("push.settled",)))
    Endpoint.objects.update(created_at=at(-1))  # made just before the pushes below
    return client


def push(push_id: str, client, *, users: dict[str, str] | None = None, ttl: int = 0,
         broadcast: bool = False, published: float | None = 0.1, created: float = 0,
         acked_at: float | None = None) -> PushLog:
    log = PushLog.objects.create(
        id=push_id, client=client, app="default", data_json="1", broadcast=broadcast,
        users=list(users or {}), target_count=len(users or {}), ttl_s=ttl,
        expires_at=at(created + ttl) if ttl else None, created_at=at(created),
        published_at=None if published is None else at(published),
        status=PushStatus.PUBLISHED if published is not None else PushStatus.ACCEPTED,
        delivered=sum(s != "offline" for s in (users or {}).values()),
        acked=sum(s == "acked" for s in (users or {}).values()))
    for user, state in (users or {}).items():
        PushRecipient.objects.create(
            push=log, app="default", user_id=user, state=state, kept=ttl > 0,
            expires_at=log.expires_at,
            acked_at=at(acked_at) if state == "acked" and acked_at is not None else None)
    return log


def scan(s: float) -> int:
    return settle_scan(now=T0 + s, settle_after_s=SETTLE)


def events() -> list[dict]:
    return [json.loads(e.body)["data"] for e in Event.objects.order_by("created_at", "id")]


def test_a_live_push_settles_its_delay_after_publication(shop):
    push("p" * 32, shop, users={"u1": "acked", "u2": "delivered", "u3": "offline"},
         acked_at=0.5)
    assert scan(10.0) == 0
    assert scan(10.2) == 1
    assert scan(11) == 0 and scan(30) == 0  # once, however many scans (or nodes)
    assert events() == [{
        "push": "p" * 32, "status": "published", "targets": 3, "delivered": 2, "acked": 1,
        "recipients": {"acked": ["u1"], "delivered": ["u2"], "offline": ["u3"],
                       "expired": [], "dropped": []}}]


def test_a_kept_push_settles_at_its_last_ack_or_at_expiry(shop):
    push("a" * 32, shop, users={"u1": "acked", "u2": "acked"}, ttl=600)
    push("b" * 32, shop, users={"u1": "acked", "u2": "delivered", "u3": "pending",
                                "u4": "dropped"}, ttl=60)
    assert scan(1) == 1  # all acked: at once
    assert scan(59) == 0
    assert scan(60) == 1  # the ttl ran out
    settled = {e["push"]: e for e in events()}
    assert settled["a" * 32]["recipients"]["acked"] == ["u1", "u2"]
    assert settled["b" * 32]["recipients"] == {
        "acked": ["u1"], "delivered": [], "offline": [], "expired": ["u2", "u3"],
        "dropped": ["u4"]}


def test_a_broadcast_carries_counts_only(shop):
    push("c" * 32, shop, broadcast=True)
    push("d" * 32, shop, broadcast=True, ttl=30)
    assert scan(11) == 1
    assert scan(31) == 1
    assert all("recipients" not in e and e["targets"] == "all" for e in events())


def test_an_unpublished_live_push_does_not_settle(shop):
    push("e" * 32, shop, users={"u1": "offline"}, published=None)
    assert scan(100) == 0


def test_only_the_pushing_clients_endpoints_get_it_and_older_pushes_do_not(shop):
    other = api_client_create(name="crm")[0]
    push("f" * 32, other, users={"u1": "acked"})
    push("0" * 32, shop, users={"u1": "acked"}, created=-3600, published=-3599)
    assert scan(20) == 0  # crm has no endpoint; the old push predates shop's endpoint
    assert Event.objects.count() == 0


def test_the_client_figures_are_counted_when_a_push_settles(shop):
    def value(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, {"node": "test-node", "app": "default",
                                                        "client": "shop", **labels}) or 0.0

    acked_before = value("gateway_push_recipient_outcomes_total", outcome="acked")
    offline_before = value("gateway_push_recipient_outcomes_total", outcome="offline")
    count_before = value("gateway_push_time_to_ack_seconds_count")
    push("9" * 32, shop, users={"u1": "acked", "u2": "offline", "u3": "offline"},
         acked_at=2.1)
    scan(11)
    assert value("gateway_push_recipient_outcomes_total", outcome="acked") == acked_before + 1
    assert value("gateway_push_recipient_outcomes_total",
                 outcome="offline") == offline_before + 2
    assert value("gateway_push_time_to_ack_seconds_count") == count_before + 1
