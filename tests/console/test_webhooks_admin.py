"""The console's webhook pages: endpoints per API client (secret shown once), deliveries
with attempts, last status and excerpt, redelivery; app column and filter."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings
from django.urls import reverse

from push_app.services import api_client_create
from push_app.tenancy import app_create
from webhooks import services
from webhooks.models import Delivery, DeliveryState, Endpoint

pytestmark = pytest.mark.django_db


def make_endpoint(name: str = "shop", app: str = "default") -> Endpoint:
    client = api_client_create(name=name, app=app)[0]
    with override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True):
        return services.endpoint_create(client=client, req=services.EndpointRequest(
            url=f"http://127.0.0.1:9/{name}", events=("user.online",)))


@override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True)
def test_an_operator_adds_an_endpoint_and_sees_its_secret_once(operator: Client):
    client = api_client_create(name="shop")[0]
    response = operator.post(reverse("admin:webhooks_endpoint_add"), {
        "client": client.pk, "url": "http://127.0.0.1:9/x", "event_choices": ["user.online",
                                                                            "push.settled"]})
    assert response.status_code == 200, response.content[:2000]
    endpoint = Endpoint.objects.get()
    assert endpoint.secret in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert endpoint.events == ["user.online", "push.settled"] and endpoint.app == "default"
    page = operator.get(reverse("admin:webhooks_endpoint_change", args=[endpoint.pk]))
    assert endpoint.secret not in page.content.decode()


def test_a_private_url_is_refused_in_the_form(operator: Client):
    client = api_client_create(name="shop")[0]
    response = operator.post(reverse("admin:webhooks_endpoint_add"), {
        "client": client.pk, "url": "http://127.0.0.1:9/x", "event_choices": ["user.online"]})
    assert response.status_code == 200
    assert "GATEWAY_WEBHOOK_ALLOW_PRIVATE" in response.content.decode()
    assert not Endpoint.objects.exists()


def test_deliveries_show_attempts_status_excerpt_and_redeliver(operator: Client):
    app_create(app_id="bank")
    make_endpoint("shop")
    make_endpoint("bank-api", app="bank")
    services.event_emit(services.NewEvent(app="default", type="user.online",
                                          data={"user": "u1", "at": 1, "sessions": 1}))
    services.event_emit(services.NewEvent(app="bank", type="user.online",
                                          data={"user": "u9", "at": 1, "sessions": 1}))
    Delivery.objects.filter(app="default").update(
        state=DeliveryState.FAILED, attempts=7, last_status=502, last_response="bad gateway")
    page = operator.get(reverse("admin:webhooks_delivery_changelist") + "?app=default")
    text = page.content.decode()
    assert page.status_code == 200
    assert "bad gateway" in text and "502" in text and "127.0.0.1:9/bank-api" not in text
    delivery = Delivery.objects.get(app="default")
    detail = operator.get(reverse("admin:webhooks_delivery_change", args=[delivery.pk]))
    assert detail.status_code == 200 and "u1" in detail.content.decode()
    response = operator.post(reverse("admin:webhooks_delivery_changelist"), {
        "action": "redeliver", "_selected_action": [delivery.pk]})
    assert response.status_code == 302
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.PENDING
    listing = operator.get(reverse("admin:webhooks_endpoint_changelist") + "?app=bank")
    assert "127.0.0.1:9/bank-api" in listing.content.decode()
    assert "127.0.0.1:9/shop" not in listing.content.decode()


def test_a_viewer_cannot_redeliver(viewer: Client):
    make_endpoint()
    services.event_emit(services.NewEvent(app="default", type="user.online",
                                          data={"user": "u1", "at": 1, "sessions": 1}))
    delivery = Delivery.objects.get()
    Delivery.objects.update(state=DeliveryState.FAILED)
    response = viewer.post(reverse("admin:webhooks_delivery_changelist"), {
        "action": "redeliver", "_selected_action": [delivery.pk]})
    assert response.status_code == 403
    assert Delivery.objects.get().state == DeliveryState.FAILED


def test_prunegateway_deletes_old_events_with_nothing_left_to_send():
    import io
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    from webhooks.models import Event

    make_endpoint()
    for _ in range(3):
        services.event_emit(services.NewEvent(app="default", type="user.online",
                                              data={"user": "u1", "at": 1, "sessions": 1}))
    Event.objects.update(created_at=timezone.now() - timedelta(days=30))
    sent, waiting, _ = Delivery.objects.order_by("id")
    Delivery.objects.filter(id=sent.id).update(state=DeliveryState.DELIVERED)
    Delivery.objects.filter(id=waiting.id).update(state=DeliveryState.FAILED)
    out = io.StringIO()
    call_command("prunegateway", "--push-days", "7", stdout=out)
    assert "2 webhook event(s)" in out.getvalue()
    assert list(Delivery.objects.values_list("state", flat=True)) == ["pending"]
