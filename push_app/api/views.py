"""The business REST API (PROTOCOL.md section 2). Thin: validate, call a service, render.

Each view names the key scope it needs (``required_scope``, PROTOCOL.md section 9) and acts
within the caller's app only: its users, its pushes, its tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway_core import bridge, metrics, orders
from gateway_core.conf import gateway_settings
from gateway_core.tokens import valid_user_id
from push_app import selectors, services, validation
from push_app.api.errors import error_body
from push_app.api.schema import BODY_ERRORS, COMMON_ERRORS, PUSH_ID, USER_ID, body, errors, ref
from push_app.api.throttling import take_app_pushes
from push_app.errors import PushUnavailable
from push_app.models import ApiClient, AuditAction, AuditActor, PushLog, RecipientState
from push_app.validation import RequestInvalid

_USER_PARAMETER = OpenApiParameter("user_id", OpenApiTypes.STR, OpenApiParameter.PATH,
                                   pattern=USER_ID["pattern"])


def _client(request: Request) -> ApiClient:
    client = request.auth
    assert isinstance(client, ApiClient), "IsApiClient lets no other principal through"
    return client


class NotPerRecipient(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "not_per_recipient"
    default_detail = "a broadcast is not tracked per recipient; see its counts"


def _own_push(request: Request, push_id: str) -> PushLog:
    """The caller's push (another client's, or another app's, is 404: it does not exist
    for this key). Raised errors are counted as refusals by the exception handler."""
    log = selectors.push_get(client=_client(request), push_id=push_id)
    if log is None:
        raise exceptions.NotFound(f"no push {push_id!r} from this client")
    return log


def _user_id(value: str) -> str:
    if not valid_user_id(value):
        raise RequestInvalid("not a user id (1-128 of A-Z a-z 0-9 _ . : @ -)",
                             fields={"user": "invalid"})
    return value


# Exempt from CSRF, as DRF's views are: an unknown path answers 404 for every method, not
# Django's HTML 403 for a POST without a CSRF cookie.
@csrf_exempt
def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    return JsonResponse(error_body("not_found", f"no API endpoint at {request.path}"), status=404)


# Real servers get POST /api/v1/push and /push/batch from push_app.api.hotpath (ASGI,
# group commit); these two views are their OpenAPI schema and serve Django's test client,
# and tests/unit/test_hotpath.py holds both to the same answers. (Comments, not docstrings:
# a view's docstring becomes its description in the published schema.)
class PushView(APIView):
    required_scope = "push"

    @extend_schema(
        request=body("PushBody"),
        responses={202: ref("PushAccepted"), 200: ref("PushAccepted"), **errors(*BODY_ERRORS)},
        examples=[OpenApiExample("to two users", value={"users": ["u1", "u2"], "data": {"n": 1}},
                                 request_only=True)],
        summary="Push JSON to users, or to everyone",
    )
    def post(self, request: Request) -> Response:
        client = _client(request)
        app = str(client.app_id)
        counted = metrics.bound(gateway_settings.node_id)
        try:
            req = validation.push_request(request.data)
        except RequestInvalid:
            counted.push(client.name, "rejected", app=app)
            raise
        take_app_pushes(bridge.app_limits(), app, 1)
        try:
            log, created = services.push_create(
                client=client, req=req, submit=bridge.submit, backlog=bridge.backlog()
            )
        except PushUnavailable:
            counted.push(client.name, "unavailable", app=app)
            raise
        counted.push(client.name, "accepted" if created else "repeated", app=app)
        return Response(
            {"id": log.id, "status": log.status, "targets": req.targets if created else
             ("all" if log.broadcast else log.target_count)},
            status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
        )


class PushBatchView(APIView):
    required_scope = "push"

    @extend_schema(
        request=body("PushBatch"),
        responses={202: ref("BatchResults"), **errors(*BODY_ERRORS)},
        summary="Several pushes in one request; one bad item does not sink the others",
    )
    def post(self, request: Request) -> Response:
        items = validation.batch_items(request.data)
        results, good = validation.batch_requests(items)
        new = 0
        app = str(_client(request).app_id)
        if good:
            take_app_pushes(bridge.app_limits(), app, len(good))
            created = services.push_create_many(
                client=_client(request), reqs=[req for _, req in good], submit=bridge.submit,
                backlog=bridge.backlog(),
            )
            for (index, _), (log, is_new) in zip(good, created, strict=True):
                results[index] = {"id": log.id, "status": log.status}
                new += is_new
        counted = metrics.bound(gateway_settings.node_id)
        name = _client(request).name
        counted.push(name, "accepted", new, app=app)
        counted.push(name, "repeated", len(good) - new, app=app)
        counted.push(name, "rejected", len(items) - len(good), app=app)
        return Response({"results": results}, status=status.HTTP_202_ACCEPTED)


class PushDetailView(APIView):
    required_scope = "push"

    @extend_schema(
        parameters=[OpenApiParameter("push_id", OpenApiTypes.STR, OpenApiParameter.PATH,
                                     pattern=PUSH_ID["pattern"])],
        responses={200: ref("PushDetails"), **errors(404, *COMMON_ERRORS)},
        summary="A push's status",
    )
    def get(self, request: Request, push_id: str) -> Response:
        return Response(selectors.push_describe(_own_push(request, push_id)))


class PushRecipientsView(APIView):
    required_scope = "push"

    @extend_schema(
        parameters=[
            OpenApiParameter("push_id", OpenApiTypes.STR, OpenApiParameter.PATH,
                             pattern=PUSH_ID["pattern"]),
            OpenApiParameter("state", OpenApiTypes.STR, OpenApiParameter.QUERY, enum=[
                "offline", "pending", "delivered", "acked", "expired", "dropped"]),
            OpenApiParameter("cursor", OpenApiTypes.STR, OpenApiParameter.QUERY),
        ],
        responses={200: ref("Recipients"), **errors(400, 404, 409, *COMMON_ERRORS)},
        summary="What became of a targeted push for each of its users",
    )
    def get(self, request: Request, push_id: str) -> Response:
        log = _own_push(request, push_id)
        if log.broadcast:
            raise NotPerRecipient()
        state = request.query_params.get("state")
        if state is not None and state not in RecipientState.values:
            raise RequestInvalid(f"state: one of {', '.join(RecipientState.values)}",
                                 fields={"state": "unknown state"})
        try:
            page = selectors.push_recipients(log=log, state=state,
                                             cursor=request.query_params.get("cursor"))
        except selectors.BadCursor as exc:
            raise RequestInvalid(f"cursor: {exc}", fields={"cursor": str(exc)}) from None
        return Response(page)


class PresenceView(APIView):
    required_scope = "presence"

    @extend_schema(
        parameters=[_USER_PARAMETER],
        responses={200: ref("Presence"), **errors(400, *COMMON_ERRORS)},
        summary="Whether a user is online, and where",
    )
    def get(self, request: Request, user_id: str) -> Response:
        return Response(bridge.user_presence(_user_id(user_id), str(_client(request).app_id)))


class DisconnectView(APIView):
    required_scope = "manage"

    @extend_schema(
        parameters=[_USER_PARAMETER],
        request=body("Disconnect"),
        responses={202: ref("DisconnectAccepted"), **errors(*BODY_ERRORS)},
        summary="Close every connection of a user on every node (4010)",
    )
    def post(self, request: Request, user_id: str) -> Response:
        user_id = _user_id(user_id)
        reason = validation.disconnect_reason(request.data)
        client = _client(request)
        order = orders.user_disconnect(user_id=user_id, reason=reason, submit=bridge.submit,
                                       app=str(client.app_id))
        services.audit_record(actor_kind=AuditActor.API_CLIENT, actor=client.name,
                              action=AuditAction.USER_DISCONNECT, user_id=user_id,
                              order_id=order.id, reason=reason)
        return Response({"id": order.id, "status": "accepted", "user": user_id},
                        status=status.HTTP_202_ACCEPTED)


class TokenView(APIView):
    required_scope = "manage"

    @extend_schema(
        request=body("TokenRequest"),
        responses={201: ref("Token"), **errors(*BODY_ERRORS)},
        summary="Mint a client token for a user of the caller's app",
    )
    def post(self, request: Request) -> Response:
        token, expires = services.token_create(validation.token_request(request.data),
                                               app=str(_client(request).app_id))
        return Response(
            {"token": token, "expires_at": datetime.fromtimestamp(expires, tz=UTC).isoformat()},
            status=status.HTTP_201_CREATED,
        )
