"""``GatewayAPI``: the business REST API (PROTOCOL.md sections 2, 6 and 7) for asyncio.

Every method returns the parsed JSON answer (None for an empty one). 429, 503, timeouts
and connection errors are retried, at most ``max_attempts`` times in all, after the
answer's ``Retry-After`` or else 0.5 s doubling. Every push and every batch item carries an
``idempotency_key`` (generated unless given), so a retry never pushes twice: the gateway
answers a repeat with the first push. Any other error answer raises ``GatewayAPIError``.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

RETRY_STATUSES = frozenset({429, 503})
RETRY_EXCEPTIONS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class GatewayAPIError(Exception):
    """An error answer: ``status``, the contract's ``error`` code, ``detail`` and, for a bad
    body, ``fields``."""

    def __init__(self, status: int, error: str, detail: str,
                 fields: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.fields = dict(fields or {})


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Webhooks:
    """``api.webhooks``: the caller's webhook endpoints (section 7)."""

    def __init__(self, api: GatewayAPI) -> None:
        self._api = api

    async def list(self) -> Any:
        return await self._api.request("GET", "/api/v1/webhooks")

    async def create(self, url: str, events: Sequence[str]) -> Any:
        return await self._api.request("POST", "/api/v1/webhooks",
                                       json={"url": url, "events": list(events)})

    async def delete(self, webhook_id: str) -> None:
        await self._api.request("DELETE", f"/api/v1/webhooks/{webhook_id}")


class GatewayAPI:
    """``GatewayAPI("http://host:port", key="…")``; use ``async with`` or ``aclose()``.

    ``transport`` (an httpx transport) and ``sleep`` are seams for tests.
    """

    def __init__(
        self,
        base_url: str,
        *,
        key: str,
        timeout_s: float = 10.0,
        max_attempts: int = 5,
        base_delay_s: float = 0.5,
        max_retry_after_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_retry_after_s = max_retry_after_s
        self.sleep = sleep
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport,
            headers={"Authorization": f"Token {key}"}, trust_env=False,
        )
        self.webhooks = Webhooks(self)

    async def __aenter__(self) -> GatewayAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # --- pushes ------------------------------------------------------------------------
    async def push(
        self,
        *,
        data: Any,
        users: Sequence[str] | None = None,
        broadcast: bool = False,
        topic: str | None = None,
        ttl: int | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """One push to ``users`` (or ``broadcast=True``); ``{"id", "status", "targets"}``."""
        return await self.request("POST", "/api/v1/push", json=push_body(
            data=data, users=users, broadcast=broadcast, topic=topic, ttl=ttl,
            idempotency_key=idempotency_key))

    async def push_batch(self, pushes: Sequence[Mapping[str, Any]]) -> Any:
        """Several pushes (each a push body); ``{"results": [...]}`` in order. Items without
        an ``idempotency_key`` get one."""
        items = [{"idempotency_key": new_idempotency_key(), **item} for item in pushes]
        return await self.request("POST", "/api/v1/push/batch", json={"pushes": items})

    async def status(self, push_id: str) -> Any:
        return await self.request("GET", f"/api/v1/push/{push_id}")

    async def recipients(self, push_id: str, *, state: str | None = None,
                         cursor: str | None = None) -> Any:
        """One page of a targeted push's per-recipient states: ``{"results", "next"}``."""
        params = {k: v for k, v in (("state", state), ("cursor", cursor)) if v is not None}
        return await self.request("GET", f"/api/v1/push/{push_id}/recipients", params=params)

    # --- users and tokens --------------------------------------------------------------
    async def presence(self, user: str) -> Any:
        return await self.request("GET", f"/api/v1/users/{user}/presence")

    async def disconnect(self, user: str, *, reason: str | None = None) -> Any:
        body = {} if reason is None else {"reason": reason}
        return await self.request("POST", f"/api/v1/users/{user}/disconnect", json=body)

    async def token(self, user: str, *, ttl: int | None = None,
                    meta: Mapping[str, Any] | None = None) -> Any:
        """A client token for ``user``: ``{"token", "expires_at"}``."""
        body: dict[str, Any] = {"user": user}
        if ttl is not None:
            body["ttl"] = ttl
        if meta is not None:
            body["meta"] = dict(meta)
        return await self.request("POST", "/api/v1/tokens", json=body)

    # --- the one way out ---------------------------------------------------------------
    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, str] | None = None) -> Any:
        """Send, retrying what the contract says may be retried; the parsed answer."""
        delay = self.base_delay_s
        for attempt in range(1, self.max_attempts + 1):
            last = attempt == self.max_attempts
            try:
                response = await self.http.request(method, path, json=json, params=params)
            except RETRY_EXCEPTIONS:
                if last:
                    raise
                await self.sleep(delay)
                delay *= 2
                continue
            if response.status_code in RETRY_STATUSES and not last:
                wait = retry_after_s(response.headers.get("Retry-After"))
                await self.sleep(min(self.max_retry_after_s, delay if wait is None else wait))
                delay *= 2
                continue
            return parse(response)
        raise AssertionError("unreachable: the last attempt returns or raises")


def push_body(*, data: Any, users: Sequence[str] | None, broadcast: bool, topic: str | None,
              ttl: int | None, idempotency_key: str | None) -> dict[str, Any]:
    if broadcast == (users is not None):
        raise ValueError("give users=[…] or broadcast=True, not both")
    body: dict[str, Any] = {"broadcast": True} if broadcast else {"users": list(users or ())}
    body["data"] = data
    if topic is not None:
        body["topic"] = topic
    if ttl is not None:
        body["ttl"] = ttl
    body["idempotency_key"] = idempotency_key or new_idempotency_key()
    return body


def parse(response: httpx.Response) -> Any:
    """The JSON of a success; ``GatewayAPIError`` for an error answer."""
    body: Any = None
    if response.content:
        try:
            body = response.json()
        except ValueError:
            body = None
    if response.status_code >= 400:
        err = body if isinstance(body, dict) else {}
        raise GatewayAPIError(response.status_code, str(err.get("error") or "http_error"),
                              str(err.get("detail") or response.text[:200]), err.get("fields"))
    return body
