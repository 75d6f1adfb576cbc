"""Apps in the console (PROTOCOL.md section 9): creation with the secret shown once,
rotation, keys with an app and scopes, and the app column and filter on sessions and pushes.
"""

from __future__ import annotations

import re

import jwt
import pytest
from django.urls import reverse

from gateway_core.tokens import decode_token
from push_app.models import ApiClient, App, AuditEvent
from push_app.tenancy import app_create, app_infos
from tests.support.console import make_node, make_push, make_session

pytestmark = pytest.mark.django_db

SECRET = re.compile(r'id="console-key" class="console-mono" type="text" readonly value="([^"]+)"')


def secrets_of(app_id: str) -> tuple[str, ...]:
    return next(info.secrets for info in app_infos() if info.id == app_id)


def test_create_shows_the_secret_once_and_it_signs_the_apps_tokens(operator):
    add = reverse("admin:push_app_app_add")
    response = operator.post(add, {"id": "shop", "name": "Web shop", "max_connections": "10",
                                   "pushes_per_second": ""})
    assert response.status_code == 200, response.content[:2000]
    html = response.content.decode()
    secret = SECRET.search(html).group(1)
    assert "shown only this once" in html and "no-store" in response["Cache-Control"]
    app = App.objects.get(pk="shop")
    assert (app.name, app.max_connections, app.pushes_per_second) == ("Web shop", 10, None)
    token = jwt.encode({"sub": "u1", "exp": 2_000_000_000}, secret, algorithm="HS256",
                       headers={"kid": "shop"})
    claims = decode_token(token, secrets_for=lambda a: secrets_of(a) if a == "shop" else None)
    assert (claims.app_id, claims.user_id) == ("shop", "u1")
    assert secret not in operator.get(reverse("admin:push_app_app_change",
                                              args=["shop"])).content.decode()
    assert AuditEvent.objects.filter(action="app_create", target="shop").exists()


@pytest.mark.parametrize("bad", ["Shop", "-x", "a b", "x" * 65])
def test_an_app_id_that_cannot_be_a_kid_is_refused(operator, bad):
    response = operator.post(reverse("admin:push_app_app_add"), {"id": bad, "name": "x"})
    assert response.status_code == 200 and "errornote" in response.content.decode()
    assert not App.objects.filter(pk=bad).exists()


def test_rotation_keeps_the_previous_secret_until_it_is_dropped(operator):
    _, first = app_create(app_id="bank")
    url = reverse("admin:push_app_app_secret", args=["bank"])
    assert "Rotate secret" in operator.get(url).content.decode()
    response = operator.post(url, {"do": "rotate"})
    second = SECRET.search(response.content.decode()).group(1)
    assert second != first and secrets_of("bank") == (second, first)
    assert "Drop previous secret" in operator.get(url).content.decode()
    operator.post(url, {"do": "drop"})
    assert secrets_of("bank") == (second,)
    assert list(AuditEvent.objects.filter(target="bank").values_list("action", flat=True)
                .order_by("at")) == ["app_rotate", "app_drop_previous"]


def test_the_default_apps_secret_is_not_rotated_here(operator):
    assert operator.get(reverse("admin:push_app_app_secret", args=["default"])).status_code == 403
    page = operator.get(reverse("admin:push_app_app_change", args=["default"])).content.decode()
    assert "GATEWAY_JWT_SECRET" in page and "Rotate secret" not in page


def test_a_viewer_cannot_rotate(viewer):
    app_create(app_id="ro")
    assert viewer.post(reverse("admin:push_app_app_secret", args=["ro"]),
                       {"do": "rotate"}).status_code == 403


def test_a_key_is_made_in_an_app_with_the_scopes_ticked(operator):
    app_create(app_id="shop")
    response = operator.post(reverse("admin:push_app_apiclient_add"),
                             {"name": "shop-pusher", "app": "shop", "scope_choices": ["push"]})
    assert response.status_code == 200
    client = ApiClient.objects.get(name="shop-pusher")
    assert (client.app_id, client.scopes) == ("shop", "push")
    apps_page = operator.get(reverse("admin:push_app_app_change", args=["shop"])).content
    assert b"shop-pusher" in apps_page


def test_sessions_and_pushes_show_and_filter_by_app(operator):
    node = make_node("n1")
    make_session("s-shop", "u1", node, app="shop")
    make_session("s-bank", "u1", node, app="bank")
    make_push(users=["u1"], app="shop")
    make_push(users=["u1"], app="bank")
    sessions = reverse("admin:sessions_app_sessionrecord_changelist")
    listed = operator.get(sessions + "?state=all&app=shop").context["cl"].result_list
    assert [r.id for r in listed] == ["s-shop"]
    assert 'class="field-app"' in operator.get(sessions + "?state=all").content.decode()
    pushes = reverse("admin:push_app_pushlog_changelist")
    listed = operator.get(pushes + "?app=bank").context["cl"].result_list
    assert {log.app for log in listed} == {"bank"}


def test_a_user_id_in_two_apps_is_two_users_on_the_user_page(operator):
    node = make_node("n1")
    make_session("s-shop", "u7", node, app="shop")
    make_session("s-bank", "u7", node, app="bank")
    page = operator.get(reverse("admin:console_user") + "?q=u7").content.decode()
    assert "several apps" in page and "u7 of bank" in page and "u7 of shop" in page
    shop = operator.get(reverse("admin:console_user") + "?q=u7&app=shop")
    html = shop.content.decode()
    assert "s-shop" in html and "s-bank" not in html
    assert "app=shop" in html  # its disconnect and test-push links name the app


def test_a_user_disconnect_from_the_console_names_the_users_app(operator, node):
    node_row = make_node("n2")
    make_session("s-one", "u8", node_row, app="bank")
    response = operator.post(reverse("admin:sessions_app_sessionrecord_disconnect_user"),
                             {"user": "u8", "app": "bank", "reason": "x", "confirm": "1"})
    assert response.status_code == 302 and "app=bank" in response["Location"]
    (order,) = [m for m in node.relay.pending if getattr(m, "action", "") == "disconnect"]
    assert (order.app, order.users) == ("bank", ("u8",))
