"""``/api/v1/webhooks`` (PROTOCOL.md section 7) through Django's test client."""

from __future__ import annotations

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from push_app.services import api_client_create
from push_app.tenancy import app_create
from webhooks import services
from webhooks.addresses import AddressRefused, check_url, is_public
from webhooks.models import Endpoint

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("node")]

URL = "http://127.0.0.1:9/hook"


def api_for(name: str, *, app: str = "default", scopes=("push", "presence", "manage")):
    row, key = api_client_create(name=name, app=app, scopes=scopes)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return api, row


@override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True)
def test_create_shows_the_secret_once_and_list_hides_it():
    api, _row = api_for("shop")
    created = api.post("/api/v1/webhooks", {"url": URL, "events": ["push.settled",
                                                                   "user.online"]},
                       format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert set(body) == {"id", "url", "events", "secret", "created_at"}
    assert body["secret"].startswith("whsec_") and body["events"] == ["push.settled",
                                                                      "user.online"]
    listed = api.get("/api/v1/webhooks").json()["results"]
    assert [e["id"] for e in listed] == [body["id"]]
    assert "secret" not in listed[0]
    assert set(listed[0]) == {"id", "url", "events", "created_at", "last_success_at",
                              "last_failure_at", "failing_since"}
    assert Endpoint.objects.get(id=body["id"]).app == "default"


@override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True)
@pytest.mark.parametrize(("body", "fields"), [
    ({"url": "ftp://example.com/", "events": ["user.online"]}, ["url"]),
    ({"url": "not a url", "events": ["user.online"]}, ["url"]),
    ({"url": URL, "events": ["push.sent"]}, ["events"]),
    ({"url": URL, "events": []}, ["events"]),
    ({"url": 5, "events": "user.online"}, ["events", "url"]),
    ({}, ["events", "url"]),
])
def test_bad_url_or_events_answer_400_naming_the_field(body, fields):
    api, _ = api_for("shop")
    response = api.post("/api/v1/webhooks", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid"
    assert sorted(response.json()["fields"]) == fields


def test_private_addresses_are_refused_by_default():
    api, _ = api_for("shop")
    response = api.post("/api/v1/webhooks", {"url": URL, "events": ["user.online"]},
                        format="json")
    assert response.status_code == 400
    assert "GATEWAY_WEBHOOK_ALLOW_PRIVATE" in response.json()["fields"]["url"]


@pytest.mark.parametrize(("address", "public"), [
    ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False), ("169.254.169.254", False),
    ("224.0.0.1", False), ("::1", False), ("fe80::1", False), ("::ffff:127.0.0.1", False),
    ("0.0.0.0", False), ("93.184.216.34", True), ("2606:4700::1111", True),
])
def test_which_addresses_are_public(address, public):
    assert is_public(address) is public


def test_a_name_resolving_to_a_private_address_is_refused():
    with pytest.raises(AddressRefused, match=r"10\.0\.0\.5"):
        check_url("https://hooks.example.com/x",
                  resolver=lambda host, port: ["93.184.216.34", "10.0.0.5"])
    check_url("https://hooks.example.com/x", resolver=lambda host, port: ["93.184.216.34"])


def test_another_client_can_neither_see_nor_delete_an_endpoint():
    with override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True):
        api, _ = api_for("shop")
        other, _ = api_for("crm")
        endpoint_id = api.post("/api/v1/webhooks", {"url": URL, "events": ["user.online"]},
                               format="json").json()["id"]
        assert other.get("/api/v1/webhooks").json() == {"results": []}
        assert other.delete(f"/api/v1/webhooks/{endpoint_id}").status_code == 404
        assert api.delete(f"/api/v1/webhooks/{endpoint_id}").status_code == 204
        assert api.delete(f"/api/v1/webhooks/{endpoint_id}").status_code == 404
        assert not Endpoint.objects.exists()


def test_webhooks_need_the_manage_scope():
    api, _ = api_for("pusher", scopes=("push",))
    response = api.get("/api/v1/webhooks")
    assert response.status_code == 403
    assert response.json() == {"error": "forbidden", "detail": "needs scope manage"}


@override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True)
def test_presence_events_go_to_the_endpoints_of_the_app_settled_to_the_client_only():
    app_create(app_id="bank")
    _, shop = api_for("shop")
    _, crm = api_for("crm")
    _, bank = api_for("bank", app="bank")
    req = services.EndpointRequest(url=URL, events=("push.settled", "user.online",
                                                    "user.offline"))
    mine = services.endpoint_create(client=shop, req=req)
    colleague = services.endpoint_create(client=crm, req=req)
    foreign = services.endpoint_create(client=bank, req=req)
    services.event_emit(services.NewEvent(app="default", type="user.online",
                                          data={"user": "u1", "at": 1, "sessions": 1}))
    services.event_emit(services.NewEvent(app="default", type="push.settled",
                                          data={"push": "p"}, client_id=shop.id))
    got = {e.id: sorted(d.event.type for d in e.deliveries.all())
           for e in (mine, colleague, foreign)}
    assert got == {mine.id: ["push.settled", "user.online"], colleague.id: ["user.online"],
                   foreign.id: []}
