"""Request middleware of the gateway."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus

from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import bad_request

from gateway_core.conf import gateway_settings

#: Django's own logger for this, so that operators' filters and handlers still apply.
bad_host_logger = logging.getLogger("django.security.DisallowedHost")

API_PREFIX = "/api/"

#: The contract's error codes (PROTOCOL.md section 2) for the statuses Django and its
#: views answer without one.
_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
    429: "rate_limited", 500: "server_error", 503: "unavailable",
}


def is_api(path: str) -> bool:
    return path.startswith(API_PREFIX)


def api_error(status: int, detail: str) -> JsonResponse:
    """An error in the contract's shape: ``{"error": code, "detail": text}``."""
    return JsonResponse({"error": _CODES.get(status, "error"), "detail": detail}, status=status)


class BadHostLog:
    """Logs a rejected ``Host`` once per host per ``every_s``, as a WARNING without a
    traceback: Django logs each one as an ERROR with its traceback, which lets anyone who
    can reach the port fill the log and page the operator."""

    every_s = 60.0
    max_hosts = 1000
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def note(self, host: str, detail: str) -> None:
        now = self.clock()
        with self._lock:
            last = self._last.get(host)
            if last is not None and now - last < self.every_s:
                return
            if len(self._last) >= self.max_hosts:  # bounded: hosts are the client's choice
                self._last.clear()
            self._last[host] = now
        bad_host_logger.warning("%s (logged once a minute per host)", detail)

    def reset(self) -> None:
        with self._lock:
            self._last.clear()


bad_hosts = BadHostLog()


class ApiErrorsMiddleware:
    """First in ``MIDDLEWARE``: no HTML under ``/api/``, and bad hosts answered quietly.

    - A ``Host`` outside ``ALLOWED_HOSTS`` gets 400 here, before any other middleware asks
      for it: JSON under ``/api/``, Django's page elsewhere; logged by ``bad_hosts``.
    - Under ``/api/``, a declared body over ``GATEWAY_MAX_REQUEST_BYTES`` gets 413 before
      anything reads it (Django's own limit would answer an HTML 400 from the body's first
      reader, which is DRF's parser).
    - Under ``/api/``, any other error that Django or a view answers in another format
      (its 404 and 500 pages, the schema view's 405 in YAML) is answered in JSON with the
      same status and ``Allow``/``Retry-After`` headers.

    The hot path (``push_app.api.hotpath``) answers its two routes before Django, in the
    same shapes.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        api = is_api(request.path_info)
        try:
            request.get_host()
        except DisallowedHost as exc:
            bad_hosts.note(request.META.get("HTTP_HOST", ""), str(exc))
            answer: HttpResponse = (api_error(400, "Invalid Host header.") if api
                                    else bad_request(request, exc))
            # Logged above, once a minute per host: not again by django.request per request.
            answer._has_been_logged = True  # type: ignore[attr-defined]
            return answer
        if not api:
            return self.get_response(request)
        declared = request.META.get("CONTENT_LENGTH") or ""
        limit = gateway_settings.max_request_bytes
        if declared.isdigit() and int(declared) > limit:
            return api_error(413, f"Request body is {declared} bytes; the limit is {limit}.")
        response = self.get_response(request)
        if response.status_code < 400 or _is_json(response):
            return response
        return _as_json(request, response)


def _is_json(response: HttpResponse) -> bool:
    return str(response.get("Content-Type", "")).startswith("application/json")


def _as_json(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    status = response.status_code
    detail = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
    if status == 405 and response.has_header("Allow"):
        detail = f"Method {request.method!r} not allowed here; allowed: {response['Allow']}."
    answer = api_error(status, detail)
    for header in ("Allow", "Retry-After", "WWW-Authenticate"):
        if response.has_header(header):
            answer[header] = response[header]
    return answer


class ChunkedBodyLengthMiddleware:
    """Gives a body sent without ``Content-Length`` (``Transfer-Encoding: chunked``) its length.

    The ASGI handler has the whole body by now, but Django REST framework reads no body at all
    when ``CONTENT_LENGTH`` is missing: a chunked JSON request would be parsed as empty. A
    chunked body past Django's own limit (``DATA_UPLOAD_MAX_MEMORY_SIZE``, above the API's)
    gets the API's 413 under ``/api/`` rather than Django's 400 page.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.META.get("CONTENT_LENGTH") and "chunked" in request.META.get(
            "HTTP_TRANSFER_ENCODING", ""
        ).lower():
            try:
                request.META["CONTENT_LENGTH"] = str(len(request.body))
            except RequestDataTooBig:
                if not is_api(request.path_info):
                    raise
                limit = gateway_settings.max_request_bytes
                return api_error(413, f"Request body is over the limit of {limit} bytes.")
        return self.get_response(request)
