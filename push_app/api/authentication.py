"""``Authorization: Token <key>`` for business systems (PROTOCOL.md section 2).

Unknown or malformed keys get 401; a deactivated client's key gets 403, so its owner can
tell "wrong key" from "key revoked".
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from push_app.models import ApiClient
from push_app.services import api_client_for_key, api_client_touch


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request: Request) -> tuple[ApiClient, ApiClient] | None:
        auth = get_authorization_header(request).split()
        if not auth or auth[0].lower() != self.keyword.lower().encode():
            return None
        if len(auth) != 2:
            raise exceptions.AuthenticationFailed("Authorization must be 'Token <key>'.")
        try:
            key = auth[1].decode()
        except UnicodeError as exc:
            raise exceptions.AuthenticationFailed("API key is not valid text.") from exc
        client = api_client_for_key(key)
        if client is None:
            raise exceptions.AuthenticationFailed("Unknown API key.")
        if not client.is_active:
            raise exceptions.PermissionDenied("This API client is deactivated.")
        api_client_touch(client)
        return client, client

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class IsApiClient(BasePermission):
    message = "Authorization: Token <key> is required."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, ApiClient)
