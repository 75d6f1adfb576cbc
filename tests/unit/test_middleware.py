"""Every answer under /api/ is JSON (PROTOCOL.md section 2), and a bad Host header is
answered and logged quietly (gateway_core/middleware.py)."""

from __future__ import annotations

import json
import logging

import pytest
from django.http import HttpResponse
from django.test import Client, RequestFactory, override_settings
from rest_framework.test import APIClient

from gateway_core import middleware
from push_app.services import api_client_create

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("node")]

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def assert_json_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json", response.content[:300]
    body = json.loads(response.content)
    assert body["error"] == code and isinstance(body["detail"], str) and body["detail"]
    return body


@pytest.fixture
def browser() -> Client:
    """A client that meets CSRF checks as a real server does (the test client skips them)."""
    return Client(enforce_csrf_checks=True)


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v1/push/x/y", "/api/", "/api/x",
                                  "/api/v2/push"])
@pytest.mark.parametrize("method", METHODS)
def test_unknown_api_paths_answer_json_404_for_every_method(browser, path, method):
    response = browser.generic(method.upper(), path, b"{}", content_type="application/json")
    assert_json_error(response, 404, "not_found")


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/"])
def test_a_wrong_method_on_the_schema_and_docs_is_json_405(browser, path):
    body = assert_json_error(browser.post(path), 405, "method_not_allowed")
    assert "POST" in body["detail"]
    assert "GET" in browser.post(path)["Allow"]


@pytest.mark.parametrize("path", ["/api/v1/tokens", "/api/v1/users/u1/disconnect",
                                  "/api/v1/push", "/api/v1/nope"])
def test_a_body_over_django_s_own_limit_is_json_413(path):
    _, key = api_client_create(name="big")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    big = b'{"user": "' + b"x" * (5 * 1024 * 1024 + 10) + b'"}'
    assert_json_error(api.post(path, data=big, content_type="application/json"), 413,
                      "payload_too_large")


def test_a_chunked_body_over_django_s_own_limit_is_json_413():
    # As the ASGI handler hands it over: the whole body, and no Content-Length.
    big = b'{"user": "' + b"x" * (5 * 1024 * 1024 + 10) + b'"}'
    request = RequestFactory().post("/api/v1/tokens", data=big, content_type="application/json")
    del request.META["CONTENT_LENGTH"]
    request.META["HTTP_TRANSFER_ENCODING"] = "chunked"
    never = middleware.ChunkedBodyLengthMiddleware(lambda request: HttpResponse(status=299))
    assert_json_error(never(request), 413, "payload_too_large")


def test_an_unexpected_error_under_api_is_json_500(monkeypatch):
    from push_app.api import views

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(views.bridge, "user_presence", broken)
    _, key = api_client_create(name="crash")
    api = APIClient(raise_request_exception=False)
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    body = assert_json_error(api.get("/api/v1/users/u1/presence"), 500, "server_error")
    assert "a bug" not in body["detail"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(middleware.bad_hosts, "clock", clock)
    middleware.bad_hosts.reset()
    return clock


def test_a_bad_host_is_json_400_under_api_and_logged_once_a_minute(browser, clock, caplog):
    caplog.set_level(logging.INFO)
    for _ in range(3):
        body = assert_json_error(browser.get("/api/v1/tokens", HTTP_HOST="evil.example"), 400,
                                 "bad_request")
        assert "Host" in body["detail"]
    browser.post("/api/v1/push", HTTP_HOST="evil.example")
    other = browser.get("/", HTTP_HOST="other.example")
    assert other.status_code == 400
    records = [r for r in caplog.records if "evil.example" in r.getMessage()
               or "other.example" in r.getMessage()]
    assert [(r.levelname, r.exc_info) for r in records] == [("WARNING", None)] * 2
    clock.now += 61
    browser.get("/api/v1/tokens", HTTP_HOST="evil.example")
    records = [r for r in caplog.records if "evil.example" in r.getMessage()]
    assert len(records) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_good_host_passes(browser):
    with override_settings(ALLOWED_HOSTS=["gw.example"]):
        response = browser.get("/api/v1/tokens", HTTP_HOST="gw.example")
    assert_json_error(response, 401, "unauthorized")  # past the host check: to the view
