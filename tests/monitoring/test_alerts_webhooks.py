"""``runalerts``' webhook and ack-ratio rules against the database, with an injected now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from monitoring.engine import AlertEngine
from monitoring.models import Alert
from push_app.models import PushLog, PushStatus
from push_app.services import api_client_create
from webhooks import services
from webhooks.models import Endpoint

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def open_alerts() -> set[tuple[str, str]]:
    return set(Alert.objects.filter(resolved_at__isnull=True).values_list("rule", "subject"))


def test_an_endpoint_failing_five_minutes_fires_and_resolves_at_its_first_success():
    client = api_client_create(name="shop")[0]
    with override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True):
        endpoint = services.endpoint_create(client=client, req=services.EndpointRequest(
            url="http://127.0.0.1:9/h", events=("user.online",)))
    engine = AlertEngine(notifiers=[])
    Endpoint.objects.update(failing_since=NOW - timedelta(seconds=299))
    engine.run_once(NOW)
    assert open_alerts() == set()
    engine.run_once(NOW + timedelta(seconds=2))
    assert open_alerts() == {("GatewayWebhookEndpointFailing", endpoint.id)}
    assert Alert.objects.get().details["client"] == "shop"
    Endpoint.objects.update(failing_since=None, last_success_at=NOW)
    engine.run_once(NOW + timedelta(seconds=30))
    assert open_alerts() == set()


@override_settings(GATEWAY_ALERT_WINDOW_S=300, GATEWAY_ALERT_ACK_RATIO=50,
                   GATEWAY_ALERT_ACK_MIN=20)
def test_a_client_whose_deliveries_are_seldom_acked_fires():
    shop = api_client_create(name="shop")[0]
    crm = api_client_create(name="crm")[0]
    small = api_client_create(name="small")[0]

    def push(n: int, client, delivered: int, acked: int, age_s: float = 60) -> None:
        PushLog.objects.create(id=f"{client.name}{n}", client=client, data_json="1",
                               status=PushStatus.DELIVERED, delivered=delivered, acked=acked,
                               created_at=NOW - timedelta(seconds=age_s))

    for i in range(10):
        push(i, shop, delivered=3, acked=1)   # 33 %
        push(i, crm, delivered=3, acked=3)    # 100 %
    push(0, small, delivered=5, acked=0)      # too few to judge
    push(99, crm, delivered=100, acked=0, age_s=900)  # out of the window
    AlertEngine(notifiers=[]).run_once(NOW)
    assert open_alerts() == {("GatewayClientAckRatioLow", "shop")}
    assert Alert.objects.get().value == pytest.approx(0.333, abs=0.001)
