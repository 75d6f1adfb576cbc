"""``Authorization: Token <key>`` for business systems (PROTOCOL.md section 2).

Unknown or malformed keys get 401; a deactivated client's key gets 403, so its owner can
tell "wrong key" from "key revoked". A key without the scope a route needs gets 403
``{"error": "forbidden", "detail": "needs scope <s>"}`` (PROTOCOL.md section 9); each view
names its scope (``required_scope``). Each 401 for a key spends one attempt of the client
address's budget (``AuthFailureThrottle``); an address that spent it gets 429 before its
key is looked up. A key of impossible shape is refused without a lookup.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from gateway_core import bridge
from gateway_core.ratelimit import TokenBuckets
from push_app.api.throttling import AuthFailureThrottle
from push_app.models import ApiClient
from push_app.services import api_client_for_key, api_client_touch, api_key_plausible
from push_app.writer import ClientRef


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request: Request) -> tuple[ApiClient, ApiClient] | None:
        address = str(request.META.get("REMOTE_ADDR") or "")
        with refusals_counted(address, bridge.rate_limits().auth_failures):
            key = key_from_header(get_authorization_header(request))
            if key is None:
                return None
            found = api_client_for_key(key)
            # A deactivated client's 403 is counted against it (``errors.count_rejected``).
            note_client(request, found)
            client = check_client(found)
        api_client_touch(client)
        return client, client

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class IsApiClient(BasePermission):
    """An API client's key, carrying the scope the view names (``required_scope``)."""

    message = "Authorization: Token <key> is required."

    def has_permission(self, request: Request, view: Any) -> bool:
        client = request.auth
        if not isinstance(client, ApiClient):
            return False
        scope = getattr(view, "required_scope", None)
        if scope is not None:
            check_scope(client.scope_list, scope)
        return True


def check_scope(scopes: tuple[str, ...], scope: str) -> None:
    """403 ``forbidden`` unless ``scope`` is among the key's ``scopes``."""
    if scope not in scopes:
        raise exceptions.PermissionDenied(f"needs scope {scope}")


def key_from_header(header: bytes) -> str | None:
    """The key of ``Authorization: Token <key>``; None without one (no header, another
    scheme), ``AuthenticationFailed`` for a malformed one."""
    auth = header.split()
    if not auth or auth[0].lower() != b"token":
        return None
    if len(auth) != 2:
        raise exceptions.AuthenticationFailed("Authorization must be 'Token <key>'.")
    try:
        return auth[1].decode()
    except UnicodeError as exc:
        raise exceptions.AuthenticationFailed("API key is not valid text.") from exc


@contextlib.contextmanager
def refusals_counted(address: str, failures: TokenBuckets[str]) -> Iterator[None]:
    """Around the steps that may refuse a key: 429 at once if ``address`` has spent its
    budget of failed authentications (in the node's ``failures`` buckets), and each 401
    inside spends one attempt of it."""
    throttle = AuthFailureThrottle(failures)
    wait_s = throttle.wait(address)
    if wait_s is not None:
        raise throttle.throttled(wait_s)
    try:
        yield
    except exceptions.AuthenticationFailed:
        throttle.failed(address)
        raise


def note_client(request: Any, client: ApiClient | None) -> None:
    """Remember on the Django request the client a key found, active or not, so that a
    refusal is counted for it even when authentication itself refused (403)."""
    if client is not None:
        http = getattr(request, "_request", request)
        http.gateway_api_client = client


def noted_client(request: Any) -> ApiClient | None:
    """The client ``note_client`` remembered on ``request`` (a DRF or Django request)."""
    http = getattr(request, "_request", request)
    client = getattr(http, "gateway_api_client", None)
    return client if isinstance(client, ApiClient) else None


def client_id_for_refusal(header: bytes, address: str, failures: TokenBuckets[str]
                          ) -> int | None:
    """The id of the client whose key a request refused before authentication carried
    (a 413 for its size, a bad ``Host``, an unknown path), for counting the refusal; None
    without a key, for a malformed or unknown one, or when ``address`` has spent its
    failed-authentication budget. An unknown key spends one attempt of that budget, as in
    authentication, so refusals with made-up keys cannot buy unbounded lookups."""
    try:
        key = key_from_header(header)
    except exceptions.AuthenticationFailed:
        return None
    if key is None or not api_key_plausible(key):
        return None
    throttle = AuthFailureThrottle(failures)
    if throttle.wait(address) is not None:
        return None
    client = api_client_for_key(key)
    if client is None:
        throttle.failed(address)
        return None
    return int(client.pk)


def check_client(client: ApiClient | None) -> ApiClient:
    """The client a key found, if it may call the API: 401 for none, 403 when deactivated."""
    if client is None:
        raise unknown_key()
    if not client.is_active:
        raise client_deactivated()
    return client


def unknown_key() -> exceptions.AuthenticationFailed:
    return exceptions.AuthenticationFailed("Unknown API key.")


def client_deactivated() -> exceptions.PermissionDenied:
    return exceptions.PermissionDenied("This API client is deactivated.")


def not_authenticated() -> exceptions.NotAuthenticated:
    """What DRF answers a request without credentials (``IsApiClient`` refuses it)."""
    return exceptions.NotAuthenticated()


class ApiKeyCache:
    """Key to client, in this process, so the hot push path costs no query per request;
    and keys found unknown, so that repeating one costs no query either.

    Keyed by the key's hash (what the database stores), holding active clients only, each
    for ``ttl_s``. A stale entry never lets a push through: the group commit that stores a
    push checks the client's row (still there, same key hash, active) in the same
    transaction (``push_app.writer``), so deactivation and key rotation take effect on the
    next push; the cache only saves the lookup. Every ``ttl_s`` a client's key is looked up
    again, which also records its use (``last_used_at``, at most once a minute).
    """

    ttl_s = 30.0
    #: How long a key found unknown is refused without a lookup. Keys are random, so none
    #: becomes known later; the bound only keeps the table fresh.
    unknown_ttl_s = 60.0
    max_entries = 10_000
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, ClientRef]] = {}
        self._unknown: dict[str, float] = {}

    def get(self, key_hash: str) -> ClientRef | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if self.clock() >= entry[0]:
            del self._entries[key_hash]
            return None
        return entry[1]

    def put(self, client: ApiClient) -> ClientRef:
        ref = ClientRef(pk=client.pk, name=client.name, key_hash=client.key_hash,
                        app=str(client.app_id), scopes=client.scope_list)
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[client.key_hash] = (self.clock() + self.ttl_s, ref)
        return ref

    def forget(self, key_hash: str) -> None:
        self._entries.pop(key_hash, None)

    def put_unknown(self, key_hash: str) -> None:
        if len(self._unknown) >= self.max_entries:
            self._unknown.clear()
        self._unknown[key_hash] = self.clock() + self.unknown_ttl_s

    def is_unknown(self, key_hash: str) -> bool:
        until = self._unknown.get(key_hash)
        if until is None:
            return False
        if self.clock() >= until:
            del self._unknown[key_hash]
            return False
        return True

    def clear(self) -> None:
        self._entries.clear()
        self._unknown.clear()
