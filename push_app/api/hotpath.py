"""``POST /api/v1/push`` and ``POST /api/v1/push/batch`` served as plain ASGI: the hot path.

``PushRoutes`` sits in front of Django in ``gateway_node.asgi`` and answers these two routes
itself, on the event loop; any other method or path goes on to Django. Per request, DRF
would cost a thread hop, Django's middleware stack (sessions, CSRF, WhiteNoise: none of
which the API needs), DRF's request machinery, a key lookup in the database and one
transaction per push. Here a request costs: header parsing, a cached key lookup, the
in-process throttle, JSON parsing, the shared validation and one place in the next group
commit (``push_app.writer``).

The contract is the DRF views' (``push_app.api.views``), which stay the documented schema
(OpenAPI) and serve Django's test client: the same authentication (``Token <key>``; 401,
403), throttle (429 with ``Retry-After``), body checks (415, 413, 400 ``bad_json``),
validation, idempotency (200 with the first push, through the per-request path) and error
bodies (``push_app.api.errors``), and the same metrics. The tests hold both to it.

Not done here, unlike Django: content negotiation (``Accept`` is ignored; the answer is
always JSON, which is all DRF would render anyway) and ``X-Forwarded-Host``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from rest_framework.exceptions import APIException, AuthenticationFailed, UnsupportedMediaType
from rest_framework.utils.mediatypes import media_type_matches

from gateway_core import metrics
from gateway_core.conf import gateway_settings
from gateway_core.messages import Message
from gateway_core.middleware import bad_hosts
from gateway_core.ratelimit import RateLimits
from gateway_core.tenancy import AppLimits
from push_app import services, validation
from push_app.api.authentication import (
    ApiKeyCache,
    check_client,
    check_scope,
    client_deactivated,
    client_id_for_refusal,
    key_from_header,
    not_authenticated,
    refusals_counted,
    unknown_key,
)
from push_app.api.errors import database_unavailable, error_body, error_parts
from push_app.api.parsers import body_too_large, check_declared_length, parse_json
from push_app.api.throttling import rate_limited, take_app_pushes, take_request
from push_app.errors import PushUnavailable
from push_app.models import ApiClient
from push_app.rejections import RejectionCounter
from push_app.relay import Relay
from push_app.validation import PushRequest, RequestInvalid
from push_app.writer import DATABASE_DOWN, ClientRef, ClientRevoked, PushWriter, store_keyed

logger = logging.getLogger("gateway.api")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Answer = tuple[int, dict[str, Any], dict[str, str]]
T = TypeVar("T")

PUSH_PATH = "/api/v1/push"
BATCH_PATH = "/api/v1/push/batch"
JSON = "application/json"
#: What Django's middleware adds to the DRF views' answers, kept for the same headers.
_HEADERS = [
    (b"content-type", JSON.encode()),
    (b"vary", b"Accept"),
    (b"allow", b"POST, OPTIONS"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class BadHost(APIException):
    status_code = 400
    default_code = "bad_request"
    default_detail = "Invalid Host header."


class PushNode(Protocol):
    """What the hot path needs of the node it is handed (``gateway_node.node.GatewayNode``)."""

    node_id: str
    relay: Relay
    writer: PushWriter
    rate_limits: RateLimits
    rejections: RejectionCounter
    app_limits: AppLimits

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the node's database thread."""
        ...


class _Caller:
    """Who made a request, once its key is known: whom a refusal is counted for."""

    __slots__ = ("address", "authorization", "client", "key_checked")

    def __init__(self) -> None:
        self.client: ClientRef | None = None
        #: Whether authentication looked at the key: a refusal before it (413, bad Host)
        #: still names the key's client when the key is known (``client_for_refusal``).
        self.key_checked = False
        self.authorization = b""
        self.address = ""


class PushRoutes:
    """ASGI: the push routes here, everything else to ``app`` (Django).

    ``node`` returns this process's node: the ASGI builder (``gateway_node.asgi``) hands it.
    """

    def __init__(self, app: Any, *, node: Callable[[], PushNode]) -> None:
        self.app = app
        self.node = node
        self.keys = ApiKeyCache()
        self._hosts: dict[bytes, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path in (PUSH_PATH, BATCH_PATH):
                await self.serve(scope, receive, send, batch=path == BATCH_PATH)
                return
        await self.app(scope, receive, send)

    async def serve(self, scope: Scope, receive: Receive, send: Send, *, batch: bool) -> None:
        caller = _Caller()
        try:
            status, body, headers = await self.handle(scope, receive, caller, batch=batch)
        except (RequestInvalid, PushUnavailable, APIException) as exc:
            status, body, headers = error_parts(exc)
        except ClientGone:
            return
        except DATABASE_DOWN as exc:
            logger.warning("POST %s: database unavailable: %r", scope["path"], exc)
            status, body, headers = error_parts(database_unavailable(exc))
        except Exception:
            logger.exception("POST %s failed", scope["path"])
            status, body, headers = 500, error_body("server_error", "internal error"), {}
        if 400 <= status < 500:
            client_id = caller.client.pk if caller.client else None
            if client_id is None and not caller.key_checked:
                client_id = await self.client_for_refusal(caller)
            self.node().rejections.count(
                client_id=client_id, status=status,
                code=str(body.get("error", "")), detail=str(body.get("detail", "")))
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        if "\u2028" in raw or "\u2029" in raw:  # as DRF's JSONRenderer: safe inside <script>
            raw = raw.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        content = raw.encode()
        out = [*_HEADERS, (b"content-length", str(len(content)).encode())]
        out.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": content})

    async def handle(self, scope: Scope, receive: Receive, caller: _Caller, *,
                     batch: bool) -> Answer:
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers[name] = value  # ASGI servers lower-case the names
        peer = scope.get("client")
        caller.authorization = headers.get(b"authorization", b"")
        caller.address = str(peer[0]) if peer else ""
        self._check_host(headers.get(b"host"), scope)
        # Before the key is looked up, as gateway_core.middleware does for the DRF views.
        declared = headers.get(b"content-length")
        check_declared_length(None if declared is None else declared.decode("latin-1"),
                              gateway_settings.max_request_bytes)
        node = self.node()
        caller.key_checked = True
        client = await self.authenticate(node, caller.authorization, caller.address,
                                         caller=caller)
        caller.client = client
        check_scope(client.scopes, "push")
        wait_s = take_request(node.rate_limits.api_clients, client.pk)
        if wait_s is not None:
            raise rate_limited(wait_s)
        data = await read_json(receive, headers)
        try:
            if batch:
                return await self.push_batch(node, client, data)
            return await self.push_one(node, client, data)
        except ClientRevoked as exc:
            self.keys.forget(client.key_hash)
            raise (client_deactivated() if exc.deactivated else unknown_key()) from None

    # --- the DRF views' steps ------------------------------------------------------------

    def _check_host(self, host: bytes | None, scope: Scope) -> None:
        """Django's ``ALLOWED_HOSTS`` check (``HttpRequest.get_host``), cached per value."""
        if host is None:
            server = scope.get("server") or ("", 80)
            host = f"{server[0]}:{server[1]}".encode("latin-1")
        allowed = self._hosts.get(host)
        if allowed is None:
            hosts = settings.ALLOWED_HOSTS
            if settings.DEBUG and not hosts:
                hosts = [".localhost", "127.0.0.1", "[::1]"]
            domain, _ = split_domain_port(host.decode("latin-1"))
            allowed = bool(domain) and validate_host(domain, hosts)
            if len(self._hosts) < 1000:
                self._hosts[host] = allowed
        if not allowed:
            text = host.decode("latin-1")
            bad_hosts.note(text, f"Invalid HTTP_HOST header: {text!r}.")
            raise BadHost()

    async def client_for_refusal(self, caller: _Caller) -> int | None:
        """The client whose key a request refused before authentication carried: from
        the key cache when it knows the key, else looked up (``client_id_for_refusal``,
        bounded by the address's failed-authentication budget)."""
        try:
            key = key_from_header(caller.authorization)
        except AuthenticationFailed:
            return None
        if key is None:
            return None
        key_hash = services.api_key_hash(key)
        known = self.keys.get(key_hash)
        if known is not None:
            return known.pk
        if self.keys.is_unknown(key_hash):
            return None
        node = self.node()
        return await node.db(client_id_for_refusal, caller.authorization, caller.address,
                             node.rate_limits.auth_failures)

    async def authenticate(self, node: PushNode, header: bytes, address: str, *,
                           caller: _Caller | None = None) -> ClientRef:
        """As ``ApiKeyAuthentication``, with the lookups cached: a key known good costs
        nothing (and is not held back by its address's failures), and a key of
        impossible shape or found unknown lately is refused without a lookup."""
        try:
            key = key_from_header(header)
        except AuthenticationFailed:
            with refusals_counted(address, node.rate_limits.auth_failures):
                raise
        if key is None:
            raise not_authenticated()
        key_hash = services.api_key_hash(key)
        client = self.keys.get(key_hash)
        if client is not None:
            return client
        with refusals_counted(address, node.rate_limits.auth_failures):
            if not services.api_key_plausible(key) or self.keys.is_unknown(key_hash):
                raise unknown_key()
            row = await node.db(_look_up_key, key)
            if row is None:
                self.keys.put_unknown(key_hash)
            elif not row.is_active and caller is not None:
                # Its 403 is this client's refusal, not an unauthenticated one.
                caller.client = ClientRef(pk=row.pk, name=row.name, key_hash=row.key_hash)
            return self.keys.put(check_client(row))

    async def push_one(self, node: PushNode, client: ClientRef, data: Any) -> Answer:
        counted = metrics.bound(node.node_id)
        try:
            req = validation.push_request(data)
        except RequestInvalid:
            counted.push(client.name, "rejected", app=client.app)
            raise
        take_app_pushes(node.app_limits, client.app, 1)
        try:
            if req.idempotency_key is None:
                services.check_relay_capacity(node.relay.backlog)
                (message,) = await node.writer.write(client=client, reqs=[req])
                if isinstance(message, RequestInvalid):  # the database refused this push
                    counted.push(client.name, "rejected", app=client.app)
                    raise message
                push_id, status, targets, created = message.id, "accepted", req.targets, True
            else:
                ((log, created),) = await store_with_keys(node, client, [req])
                push_id, status = log.id, log.status
                targets = req.targets if created else ("all" if log.broadcast
                                                       else log.target_count)
        except PushUnavailable:
            counted.push(client.name, "unavailable", app=client.app)
            raise
        counted.push(client.name, "accepted" if created else "repeated", app=client.app)
        return (202 if created else 200), {"id": push_id, "status": status,
                                           "targets": targets}, {}

    async def push_batch(self, node: PushNode, client: ClientRef, data: Any) -> Answer:
        items = validation.batch_items(data)
        results, good = validation.batch_requests(items)
        new = accepted = 0
        if good:
            take_app_pushes(node.app_limits, client.app, len(good))
            reqs = [req for _, req in good]
            stored: list[tuple[str, str, bool] | RequestInvalid]
            if any(req.idempotency_key is not None for req in reqs):
                stored = [(log.id, log.status, created)
                          for log, created in await store_with_keys(node, client, reqs)]
            else:
                services.check_relay_capacity(node.relay.backlog)
                stored = [m if isinstance(m, RequestInvalid) else (m.id, "accepted", True)
                          for m in await node.writer.write(client=client, reqs=reqs)]
            for (index, _), outcome in zip(good, stored, strict=True):
                if isinstance(outcome, RequestInvalid):  # the database refused this push
                    results[index] = {"error": outcome.code, "detail": outcome.detail}
                    continue
                push_id, status, created = outcome
                results[index] = {"id": push_id, "status": status}
                new += created
                accepted += 1
        counted = metrics.bound(node.node_id)
        counted.push(client.name, "accepted", new, app=client.app)
        counted.push(client.name, "repeated", accepted - new, app=client.app)
        counted.push(client.name, "rejected", len(items) - accepted, app=client.app)
        return 202, {"results": results}, {}


def _look_up_key(key: str) -> ApiClient | None:
    """The key's client (on the database thread), recording its use as DRF's path does."""
    client = services.api_client_for_key(key)
    if client is not None and client.is_active:
        services.api_client_touch(client)
    return client


async def store_with_keys(node: PushNode, client: ClientRef,
                          reqs: Sequence[PushRequest]) -> list[Any]:
    """Pushes with idempotency keys: the per-request path, on the node's database thread;
    what it stored goes to the relay once committed."""
    committed: list[Message] = []
    outcome = await node.db(store_keyed, client, reqs, committed.append, node.relay.backlog)
    if isinstance(outcome, ClientRevoked):
        raise outcome
    for message in committed:
        node.relay.submit(message)
    return outcome


async def read_json(receive: Receive, headers: dict[bytes, bytes]) -> Any:
    """The body as DRF's ``request.data`` would be with ``LimitedJSONParser``: ``{}`` when
    empty, else 415 unless JSON, 413 over ``GATEWAY_MAX_REQUEST_BYTES``, 400 if not JSON."""
    limit = gateway_settings.max_request_bytes
    declared_raw = headers.get(b"content-length")
    declared = None if declared_raw is None else declared_raw.decode("latin-1")
    body: bytes | None = None
    if declared is None:  # chunked, or no body at all: its length is what arrives
        body = await _read_body(receive, limit)
        length = limit + 1 if body is None else len(body)
    else:
        length = int(declared) if declared.isdigit() else 0
    if length == 0:
        return {}
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    if content_type != JSON and (len(content_type) > 256
                                 or not media_type_matches(JSON, content_type)):
        raise UnsupportedMediaType(content_type)
    check_declared_length(declared, limit)
    if declared is not None:
        body = await _read_body(receive, limit)
    if body is None:
        raise body_too_large(limit)
    return parse_json(body)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
