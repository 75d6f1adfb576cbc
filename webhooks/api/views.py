"""``/api/v1/webhooks`` (PROTOCOL.md section 7). Thin: validate, call a service, render.

Needs the ``manage`` scope; an endpoint belongs to the API client that made it, and
another client's endpoint is answered 404, as if it did not exist."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from push_app.api.errors import count_rejected, error_body
from push_app.api.schema import BODY_ERRORS, COMMON_ERRORS, PUSH_ID, errors
from push_app.models import ApiClient
from webhooks import selectors, services
from webhooks.models import EVENT_TYPES

_EVENTS = {"type": "array", "items": {"type": "string", "enum": list(EVENT_TYPES)},
           "minItems": 1}
_WHEN = {"type": "string", "format": "date-time", "nullable": True}
_ENDPOINT = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "url": {"type": "string"}, "events": _EVENTS,
                   "created_at": {"type": "string", "format": "date-time"},
                   "last_success_at": _WHEN, "last_failure_at": _WHEN, "failing_since": _WHEN},
    "required": ["id", "url", "events", "created_at", "last_success_at", "last_failure_at",
                 "failing_since"],
}
_CREATED = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "url": {"type": "string"}, "events": _EVENTS,
                   "secret": {"type": "string", "description": "shown only in this answer"},
                   "created_at": {"type": "string", "format": "date-time"}},
    "required": ["id", "url", "events", "secret", "created_at"],
}
_REQUEST = {
    "type": "object",
    "properties": {"url": {"type": "string", "format": "uri", "maxLength": 2000,
                           "description": "http:// or https://; not resolving to a private "
                                          "address unless GATEWAY_WEBHOOK_ALLOW_PRIVATE"},
                   "events": _EVENTS},
    "required": ["url", "events"],
}


def _client(request: Request) -> ApiClient:
    client = request.auth
    assert isinstance(client, ApiClient), "IsApiClient lets no other principal through"
    return client


class WebhookListView(APIView):
    required_scope = "manage"

    @extend_schema(
        request={"application/json": _REQUEST},
        responses={201: _CREATED, **errors(409, *BODY_ERRORS)},
        summary="Register a webhook endpoint (its signing secret is shown only here)",
    )
    def post(self, request: Request) -> Response:
        endpoint = services.endpoint_create(client=_client(request),
                                            req=services.endpoint_request(request.data))
        body: dict[str, Any] = {
            "id": endpoint.id, "url": endpoint.url, "events": list(endpoint.events),
            "secret": endpoint.secret, "created_at": endpoint.created_at.isoformat()}
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(
        responses={200: {"type": "object", "properties": {
            "results": {"type": "array", "items": _ENDPOINT}}, "required": ["results"]},
            **errors(*COMMON_ERRORS)},
        summary="This API client's webhook endpoints (no secrets)",
    )
    def get(self, request: Request) -> Response:
        return Response({"results": [services.endpoint_describe(e) for e in
                                     selectors.endpoint_list(client=_client(request))]})


class WebhookDetailView(APIView):
    required_scope = "manage"

    @extend_schema(
        parameters=[OpenApiParameter("endpoint_id", OpenApiTypes.STR, OpenApiParameter.PATH,
                                     pattern=PUSH_ID["pattern"])],
        responses={204: None, **errors(404, *COMMON_ERRORS)},
        summary="Delete a webhook endpoint; its events not yet sent are dropped",
    )
    def delete(self, request: Request, endpoint_id: str) -> Response:
        if not services.endpoint_delete(client=_client(request), endpoint_id=endpoint_id):
            body = error_body("not_found", f"no webhook endpoint {endpoint_id!r} of this client")
            count_rejected(request, status.HTTP_404_NOT_FOUND, body)
            return Response(body, status=status.HTTP_404_NOT_FOUND)
        return Response(status=status.HTTP_204_NO_CONTENT)
