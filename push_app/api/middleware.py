"""Counts the API's refusals that no view counted (issue #17).

The DRF views count what they refuse (``push_app.api.errors.exception_handler``), but some
answers under ``/api/`` are given before or beside them: ``ApiErrorsMiddleware``'s 413 for
an over-long body and 400 for a ``Host`` outside ``ALLOWED_HOSTS``, and the 404 of a path
no API route matches. This middleware, first in ``MIDDLEWARE``, sees every answer last and
counts each 4xx under ``/api/`` that is not marked counted, for the client whose key the
request carried when the key is known, else as unauthenticated. The hot path's two routes
never reach Django; they count their own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

from gateway_core import bridge
from gateway_core.middleware import is_api
from push_app.api.authentication import client_id_for_refusal
from push_app.api.errors import is_counted


class RejectionCountMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (400 <= response.status_code < 500 and is_api(request.path_info)
                and not is_counted(request) and bridge.installed()):
            count_refusal(request, response)
        return response


def count_refusal(request: HttpRequest, response: HttpResponse) -> None:
    body = _json_body(response)
    # As DRF's get_authorization_header reads it: bytes, latin-1.
    header = request.META.get("HTTP_AUTHORIZATION", "").encode("iso-8859-1", "replace")
    address = str(request.META.get("REMOTE_ADDR") or "")
    client_id = client_id_for_refusal(header, address, bridge.rate_limits().auth_failures)
    bridge.rejected(client_id=client_id, status=response.status_code,
                    code=str(body.get("error", "")), detail=str(body.get("detail", "")))


def _json_body(response: HttpResponse) -> dict[str, Any]:
    # ApiErrorsMiddleware (inside this one) made every answer under /api/ JSON; a streamed
    # or non-JSON one is counted without its code.
    if getattr(response, "streaming", False):
        return {}
    try:
        body = json.loads(response.content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
