"""Every API error as ``{"error": code, "detail": text, "fields": {...}?}``.

The one place that maps errors to HTTP: DRF's exceptions, ``RequestInvalid`` (a refused
request) and the domain's ``PushUnavailable`` (503), for the hot path (``error_parts``) and
the DRF views (``exception_handler``) alike."""

from __future__ import annotations

import logging
from typing import Any

from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from gateway_core import bridge
from push_app.api.authentication import noted_client
from push_app.errors import PushUnavailable
from push_app.models import ApiClient
from push_app.validation import RequestInvalid
from push_app.writer import DATABASE_DOWN

logger = logging.getLogger("gateway.api")

CODES: dict[type[exceptions.APIException], str] = {
    exceptions.NotAuthenticated: "unauthorized",
    exceptions.AuthenticationFailed: "unauthorized",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.ParseError: "bad_json",
    exceptions.Throttled: "rate_limited",
    exceptions.ValidationError: "invalid",
}


def error_body(code: str, detail: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": code, "detail": detail}
    if fields:
        body["fields"] = fields
    return body


def api_exception_body(exc: exceptions.APIException) -> dict[str, Any]:
    """The contract's body for one of DRF's exceptions."""
    code = next((c for cls, c in CODES.items() if isinstance(exc, cls)), None)
    code = code or str(getattr(exc, "default_code", "error"))
    fields = None
    if isinstance(exc.detail, dict):
        fields = {k: " ".join(map(str, v)) if isinstance(v, list) else str(v)
                  for k, v in exc.detail.items()}
        detail = "invalid request"
    elif isinstance(exc.detail, list):
        detail = " ".join(map(str, exc.detail))
    else:
        detail = str(exc.detail)
    return error_body(code, detail, fields)


def error_parts(exc: RequestInvalid | PushUnavailable | exceptions.APIException
                ) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and headers of an error: what the DRF views answer (through
    ``exception_handler``) and the API's paths served without DRF
    (``push_app.api.hotpath``)."""
    if isinstance(exc, PushUnavailable):
        return 503, error_body(exc.code, exc.detail), {}
    if isinstance(exc, RequestInvalid):
        return exc.status, error_body(exc.code, exc.detail, exc.fields), {}
    headers: dict[str, str] = {}
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "Token"
    wait = getattr(exc, "wait", None)
    if wait:
        headers["Retry-After"] = f"{int(wait)}"
    return exc.status_code, api_exception_body(exc), headers


def database_unavailable(exc: Exception) -> PushUnavailable:
    """For a database that failed as a whole (locked past its timeout, unreachable): the
    request may be retried, and nothing of it was stored (503)."""
    return PushUnavailable(f"the database is unavailable: {exc.__class__.__name__}")


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = _error_response(exc, context)
    if response is not None and 400 <= response.status_code < 500:
        count_rejected(context.get("request"), response.status_code, response.data)
    return response


def count_rejected(request: Any, status: int, body: Any) -> None:
    """Count a refused request for its client (``gateway_core.bridge.rejected``); a
    request whose key found no client counts as unauthenticated."""
    if not bridge.installed() or request is None:
        return
    # ``_auth``, not ``auth``: reading ``auth`` would authenticate again. A deactivated
    # client's key never became ``_auth`` (its 403 is raised while authenticating), but the
    # key found the client: the refusal is that client's, not an unauthenticated one.
    client = getattr(request, "_auth", None)
    if not isinstance(client, ApiClient):
        client = noted_client(request)
    mark_counted(request)
    body = body if isinstance(body, dict) else {}
    bridge.rejected(client_id=client.pk if client is not None else None,
                    status=status,
                    code=str(body.get("error", "")), detail=str(body.get("detail", "")))


def mark_counted(request: Any) -> None:
    """Tell ``RejectionCountMiddleware`` that this request's refusal is counted already."""
    http = getattr(request, "_request", request)
    http.gateway_rejection_counted = True


def is_counted(request: Any) -> bool:
    return bool(getattr(request, "gateway_rejection_counted", False))


def _error_response(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DATABASE_DOWN):
        logger.warning("%s: database unavailable: %r",
                       getattr(context.get("request"), "path", "?"), exc)
        exc = database_unavailable(exc)
    if isinstance(exc, RequestInvalid | PushUnavailable):
        status, body, headers = error_parts(exc)
        return Response(body, status=status, headers=headers)
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    if response.status_code == 401 and not response.has_header("WWW-Authenticate"):
        response["WWW-Authenticate"] = "Token"
    response.data = api_exception_body(exc)
    return response
