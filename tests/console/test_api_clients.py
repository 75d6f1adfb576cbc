"""API clients in admin: a key shown once that works, rotation, deactivation, counts."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from push_app.models import ApiClient
from push_app.rejections import RejectionCounter
from push_app.services import api_client_create
from tests.support.console import make_push

pytestmark = pytest.mark.django_db

KEY = re.compile(r'value="(gw_[0-9a-f]{8}_[A-Za-z0-9_-]+)"')


def push_with(key: str) -> int:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return api.post("/api/v1/push", {"users": ["u1"], "data": 1}, format="json").status_code


def test_create_shows_the_key_once_and_it_authenticates(operator, node):
    add = reverse("admin:push_app_apiclient_add")
    form = operator.get(add).content.decode()
    assert 'name="name"' in form and 'name="is_active"' not in form

    response = operator.post(add, {"name": "shop", "app": "default",
                                   "scope_choices": ["push", "presence", "manage"]})
    assert response.status_code == 200
    html = response.content.decode()
    key = KEY.search(html).group(1)
    assert "shown only this once" in html and 'data-copy="console-key"' in html
    assert "no-store" in response["Cache-Control"]
    assert key not in str(response.cookies)  # not parked in a message cookie

    client = ApiClient.objects.get(name="shop")
    assert key not in client.key_hash and client.key_prefix in key
    assert push_with(key) == 202
    later = operator.get(reverse("admin:push_app_apiclient_change", args=[client.pk]))
    assert key not in later.content.decode() and "Rotate key" in later.content.decode()


def test_rotate_invalidates_the_old_key(operator, node):
    client, old_key = api_client_create(name="billing")
    url = reverse("admin:push_app_apiclient_rotate", args=[client.pk])
    confirm = operator.get(url)
    assert confirm.status_code == 200 and "stops working at once" in confirm.content.decode()
    assert push_with(old_key) == 202  # a GET changes nothing

    response = operator.post(url)
    new_key = KEY.search(response.content.decode()).group(1)
    assert new_key != old_key
    assert push_with(old_key) == 401
    assert push_with(new_key) == 202


def test_deactivate_action_and_counts(operator, node):
    shop, key = api_client_create(name="shop")
    quiet, _ = api_client_create(name="quiet")
    make_push(["u1"], client=shop)
    make_push(["u2"], client=shop, age=timedelta(days=2))

    listing = operator.get(reverse("admin:push_app_apiclient_changelist"))
    rows = {c.name: c for c in listing.context["cl"].result_list}
    assert (rows["shop"].n_pushes_24h, rows["shop"].n_pushes) == (1, 2)
    assert (rows["quiet"].n_pushes_24h, rows["quiet"].n_pushes) == (0, 0)

    operator.post(reverse("admin:push_app_apiclient_changelist"),
                  {"action": "deactivate", "_selected_action": [shop.pk]})
    shop.refresh_from_db()
    quiet.refresh_from_db()
    assert not shop.is_active and quiet.is_active
    assert push_with(key) == 403


def test_change_page_shows_rejected_requests_and_the_last_error(operator, node):
    client, _ = api_client_create(name="billing")
    page = operator.get(reverse("admin:push_app_apiclient_change", args=[client.pk]))
    assert "Rejected requests (1 h)" in page.content.decode()
    counter = RejectionCounter(node_id="n1")
    counter.count(client_id=client.pk, status=413, code="payload_too_large", detail="too big")
    counter.count(client_id=client.pk, status=400, code="invalid", detail="no users")
    counter.write(counter.take())

    html = operator.get(
        reverse("admin:push_app_apiclient_change", args=[client.pk])).content.decode()
    assert "400: 1, 413: 1" in html
    assert "400 invalid: no users" in html
