"""Writes of the push side: pushes, tokens, API keys (disconnect orders: ``gateway_core.orders``).

Every push is stored (``accepted``) in the same transaction that decides it exists, and is
handed to the node's relay only once that transaction commits, so a push the API answered
202 for is in the database whatever happens next.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from datetime import datetime, timedelta

from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from gateway_core.bridge import Submit
from gateway_core.conf import gateway_settings
from gateway_core.messages import PushMessage
from gateway_core.tenancy import DEFAULT_APP, SCOPES
from gateway_core.tokens import encode_token
from push_app.errors import BrokerUnavailable, PushUnavailable
from push_app.models import (
    ApiClient,
    ApiRejections,
    AuditAction,
    AuditActor,
    AuditEvent,
    PushDelivery,
    PushLog,
    PushRecipient,
    PushStatus,
)
from push_app.pushlog import build_log, build_recipients
from push_app.tenancy import app_get, app_signing_secret
from push_app.validation import PushRequest, TokenRequest, push_request

IDEMPOTENCY_WINDOW = timedelta(hours=24)
#: Past this many unpublished messages in this process, new pushes get 503.
MAX_RELAY_BACKLOG = 100_000
KEY_PREFIX = "gw"



def new_push_id(now: float | None = None) -> str:
    """32 hex characters that sort by acceptance in this process: milliseconds, then a
    sequence within the millisecond, then randomness."""
    ms = int((time.time() if now is None else now) * 1000)
    return new_push_ids(ms, 1)[0]


_ids_lock = threading.Lock()
_last_ms = 0
_seq = 0
#: 24 bits of sequence within a millisecond, then 56 random bits.
_SEQ_MAX = 0xFFFFFF
_CLOCK_SLACK_MS = 1000


def new_push_ids(ms: int, count: int) -> list[str]:
    """``count`` push ids accepted at ``ms``, increasing (PROTOCOL.md section 6: pushes one
    node accepted reach a user in accept order, and a replay sorts by id). The sequence
    starts at a random point each millisecond, so two processes' ids within one
    millisecond do not follow a pattern; ids of one process do not go backwards when the
    clock steps back a little (the last millisecond is kept, up to ``_CLOCK_SLACK_MS``; a
    larger step is a reset clock, and ids follow it)."""
    global _last_ms, _seq
    with _ids_lock:
        if ms > _last_ms or ms < _last_ms - _CLOCK_SLACK_MS:
            _last_ms, _seq = ms, int.from_bytes(os.urandom(2), "big")
        ms = _last_ms
        if _seq + count > _SEQ_MAX:  # past a millisecond's sequence: borrow the next one
            _last_ms, _seq = _last_ms + 1, 0
            ms = _last_ms
        start, _seq = _seq, _seq + count
    randomness = os.urandom(7 * count).hex()
    return [f"{ms:012x}{start + i:06x}{randomness[14 * i:14 * i + 14]}" for i in range(count)]


def push_message(log: PushLog) -> PushMessage:
    return PushMessage(
        id=log.id,
        users=None if log.broadcast else tuple(log.users),
        data_json=log.data_json,
        topic=log.topic,
        accepted_ms=int(log.created_at.timestamp() * 1000),
        expires_ms=int(log.expires_at.timestamp() * 1000) if log.expires_at else None,
        app=log.app,
    )


def check_relay_capacity(backlog: int) -> None:
    """``BrokerUnavailable`` while the relay already holds more than ``MAX_RELAY_BACKLOG``
    unpublished messages."""
    if backlog > MAX_RELAY_BACKLOG:
        raise BrokerUnavailable(
            f"the broker is unreachable and {backlog} pushes already wait for it")


def _build_log(client: ApiClient | None, req: PushRequest, now: datetime, app: str) -> PushLog:
    return build_log(client, req, push_id=new_push_id(now.timestamp()), now=now,
                     node_id=gateway_settings.node_id, app=app)


def _existing(client: ApiClient | None, key: str | None, now: datetime) -> PushLog | None:
    """The push an idempotency key already made within 24 h; frees an older use of the key."""
    if client is None or key is None:
        return None
    first = PushLog.objects.filter(client=client, idempotency_key=key).first()
    if first is None:
        return None
    if first.created_at >= now - IDEMPOTENCY_WINDOW:
        return first
    PushLog.objects.filter(pk=first.pk).update(idempotency_key=None)
    return None


def push_create(*, client: ApiClient | None, req: PushRequest, submit: Submit,
                backlog: int = 0, app: str = DEFAULT_APP) -> tuple[PushLog, bool]:
    """Store one push and queue it for the broker; ``(log, False)`` for a repeated key."""
    return push_create_many(client=client, reqs=[req], submit=submit, backlog=backlog,
                            app=app)[0]


def push_create_many(*, client: ApiClient | None, reqs: list[PushRequest], submit: Submit,
                     backlog: int = 0, app: str = DEFAULT_APP) -> list[tuple[PushLog, bool]]:
    """Store several pushes in one transaction (one commit for a whole batch), in the
    client's app (``app`` only for a push without a client: the console's)."""
    check_relay_capacity(backlog)
    now = timezone.now()
    if client is not None:
        app = str(client.app_id)
    results: list[tuple[PushLog, bool]] = []
    try:
        with transaction.atomic():
            for req in reqs:
                existing = _existing(client, req.idempotency_key, now)
                if existing is not None:
                    results.append((existing, False))
                    continue
                log = _build_log(client, req, now, app)
                if req.idempotency_key is None:
                    log.save(force_insert=True)
                else:
                    try:
                        with transaction.atomic():
                            log.save(force_insert=True)
                    except IntegrityError:
                        # A concurrent request with the same key won the race.
                        first = PushLog.objects.get(
                            client=client, idempotency_key=req.idempotency_key
                        )
                        results.append((first, False))
                        continue
                results.append((log, True))
                recipients = build_recipients(log)
                if recipients:
                    PushRecipient.objects.bulk_create(recipients)
                message = push_message(log)
                transaction.on_commit(lambda m=message: submit(m))  # type: ignore[misc]
    except DatabaseError as exc:
        raise PushUnavailable(
            f"the push could not be stored: {exc.__class__.__name__}") from exc
    return results


def token_create(req: TokenRequest, *, app: str = DEFAULT_APP) -> tuple[str, int]:
    """A client token for a user of ``app`` (the caller's), signed with its current secret."""
    return encode_token(user_id=req.user_id, ttl_s=req.ttl_s, secret=app_signing_secret(app),
                        meta=req.meta, app_id=app)


# --- API keys ---------------------------------------------------------------------------

def api_key_hash(key: str) -> str:
    """What is stored of a key. Keys are 256-bit random strings, so a fast hash is enough;
    no password stretching."""
    return hashlib.sha256(key.encode()).hexdigest()


_hash_key = api_key_hash


def api_client_create(*, name: str, app: str = DEFAULT_APP,
                      scopes: tuple[str, ...] = SCOPES) -> tuple[ApiClient, str]:
    """A new client of ``app`` with ``scopes`` and its key; the key is shown once and stored
    hashed. ``App.DoesNotExist`` for an unknown app."""
    client = ApiClient(name=name, app=app_get(app), scopes=",".join(scopes))
    key = _assign_key(client)
    client.save()
    return client, key


def api_client_rotate(*, client: ApiClient) -> str:
    key = _assign_key(client)
    client.save(update_fields=["key_prefix", "key_hash"])
    return key


#: ``gw_<8 hex>_<token_urlsafe(32)>``, as ``_assign_key`` makes them.
_KEY_SHAPE = re.compile(rf"{KEY_PREFIX}_[0-9a-f]{{8}}_[A-Za-z0-9_-]{{43}}")


def _assign_key(client: ApiClient) -> str:
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    client.key_prefix = prefix
    client.key_hash = _hash_key(key)
    return key


def api_key_plausible(key: str) -> bool:
    """Whether ``key`` has the shape ``_assign_key`` gives keys: one that has not is
    refused without a lookup."""
    return _KEY_SHAPE.fullmatch(key) is not None


def api_client_for_key(key: str) -> ApiClient | None:
    """The client a key belongs to (active or not), or None."""
    if not api_key_plausible(key):
        return None
    parts = key.split("_", 2)
    client = ApiClient.objects.filter(key_prefix=parts[1]).first()
    if client is None or not hmac.compare_digest(client.key_hash, _hash_key(key)):
        return None
    return client


def api_client_touch(client: ApiClient, *, every: timedelta = timedelta(minutes=1)) -> None:
    """Record use, at most once a minute, so auth does not cost a write per request."""
    now = timezone.now()
    if client.last_used_at is None or now - client.last_used_at >= every:
        client.last_used_at = now
        ApiClient.objects.filter(pk=client.pk).update(last_used_at=now)


def api_client_set_active(*, clients: list[ApiClient], active: bool) -> int:
    """(De)activate clients: a deactivated client's key gets 403 from its next request."""
    return ApiClient.objects.filter(pk__in=[c.pk for c in clients]).update(is_active=active)


# --- Operator console --------------------------------------------------------------------

TEST_PUSH_TOPIC = "console.test"


def console_test_push(*, user_id: str, data: object, topic: str | None, submit: Submit,
                      backlog: int = 0, app: str = DEFAULT_APP) -> PushLog:
    """A push from an operator to one user of ``app``, through the same path as the API's
    (validated, stored, published after commit), with no API client: it shows as
    "console" in admin."""
    req = push_request({"users": [user_id], "data": data,
                        **({"topic": topic} if topic else {})})
    log, _ = push_create(client=None, req=req, submit=submit, backlog=backlog, app=app)
    return log


# --- Audit trail ---------------------------------------------------------------------------

#: The longest reason an audit event keeps (the REST API's and the console's limit).
AUDIT_REASON_CHARS = 200


def audit_record(*, actor_kind: AuditActor, actor: str, action: AuditAction, user_id: str = "",
                 target: str = "", order_id: str = "", reason: str = "",
                 now: datetime | None = None) -> AuditEvent:
    """Record what an operator or an API client did, in the caller's request (one INSERT).

    Callers: the REST API's disconnect view, and the console's actions (disconnects, test
    pushes, API keys). Never the WebSocket side.
    """
    return AuditEvent.objects.create(
        at=now or timezone.now(), actor_kind=actor_kind, actor=actor[:150], action=action,
        user_id=user_id, target=target, order_id=order_id,
        reason=reason.strip()[:AUDIT_REASON_CHARS],
    )


# --- Retention ------------------------------------------------------------------------------

def rejections_prune(*, before: datetime, dry_run: bool = False) -> int:
    """Delete the per-minute counts of refused API requests older than ``before`` (one
    statement: a minute row per client and node, a few thousand a day at most)."""
    old = ApiRejections.objects.filter(minute__lt=before)
    return old.count() if dry_run else old.delete()[0]


def push_logs_prune(*, before: datetime, batch_size: int = 1000, dry_run: bool = False,
                    now: datetime | None = None) -> tuple[int, int, int]:
    """Delete push logs created before ``before`` with their deliveries and recipients, in
    batches (short transactions, bounded memory); ``(logs, deliveries, recipients)``
    deleted, or that would be.

    Kept whatever its age: a push still ``accepted`` (it waits for the broker), and a kept
    push not expired at ``now`` (its users may still connect): an accepted push is never
    silently lost (PROTOCOL.md sections 2 and 6), even with a retention shorter than its ttl.
    """
    now = now or timezone.now()
    old = (PushLog.objects.filter(created_at__lt=before)
           .exclude(status=PushStatus.ACCEPTED).exclude(expires_at__gt=now))
    if dry_run:
        return (old.count(), PushDelivery.objects.filter(push__in=old).count(),
                PushRecipient.objects.filter(push__in=old).count())
    logs = deliveries = recipients = 0
    while True:
        ids = list(old.values_list("id", flat=True)[:batch_size])
        if not ids:
            return logs, deliveries, recipients
        with transaction.atomic():
            deliveries += PushDelivery.objects.filter(push_id__in=ids).delete()[0]
            recipients += PushRecipient.objects.filter(push_id__in=ids).delete()[0]
            logs += PushLog.objects.filter(id__in=ids).only("id").delete()[0]
