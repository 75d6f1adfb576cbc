"""Writes of webhooks: endpoints, events into the outbox, redelivery.

``event_emit`` is the one way an event enters the outbox: it stores the event and one
delivery per endpoint that wants it, in the caller's transaction, before anything is sent
(PROTOCOL.md section 7, "Guarantees").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from push_app.models import ApiClient
from push_app.services import new_push_id
from push_app.validation import RequestInvalid
from webhooks import addresses
from webhooks.models import (
    EVENT_TYPES,
    PRESENCE_EVENTS,
    Delivery,
    DeliveryState,
    Endpoint,
    Event,
    SettledPush,
)
from webhooks.signing import new_secret

MAX_ENDPOINTS_PER_CLIENT = 20


def new_id(now: float | None = None) -> str:
    """32 hex characters, time first (as push ids): events and endpoints sort by age."""
    return new_push_id(now)


@dataclass(frozen=True, slots=True)
class EndpointRequest:
    url: str
    events: tuple[str, ...]


def endpoint_request(data: Any, *, resolver: addresses.Resolver = addresses.resolve
                     ) -> EndpointRequest:
    """A valid ``POST /api/v1/webhooks`` body, or ``RequestInvalid`` naming the bad fields."""
    if not isinstance(data, dict):
        raise RequestInvalid("the body must be a JSON object")
    fields: dict[str, str] = {}
    url = data.get("url")
    try:
        addresses.check_url(url if isinstance(url, str) else "", resolver=resolver)
    except addresses.AddressRefused as exc:
        fields["url"] = str(exc)
    events = data.get("events")
    if (not isinstance(events, list) or not events
            or not all(isinstance(e, str) for e in events)):
        fields["events"] = f"a non-empty list of: {', '.join(EVENT_TYPES)}"
    else:
        unknown = sorted({e for e in events if e not in EVENT_TYPES})
        if unknown:
            fields["events"] = (f"unknown event {unknown[0]!r}; known: "
                                f"{', '.join(EVENT_TYPES)}")
    if fields:
        raise RequestInvalid("invalid webhook endpoint", fields=fields)
    assert isinstance(url, str) and isinstance(events, list)
    return EndpointRequest(url=url, events=tuple(dict.fromkeys(events)))


def endpoint_create(*, client: ApiClient, req: EndpointRequest) -> Endpoint:
    """A new endpoint of ``client``; its ``secret`` is readable on the returned object only
    (the API shows it in this answer and never again)."""
    if Endpoint.objects.filter(client=client).count() >= MAX_ENDPOINTS_PER_CLIENT:
        raise RequestInvalid(f"at most {MAX_ENDPOINTS_PER_CLIENT} endpoints per API client",
                             code="too_many_endpoints", status=409)
    return Endpoint.objects.create(
        id=new_id(), client=client, app=str(client.app_id), url=req.url,
        events=list(req.events), secret=new_secret(), created_at=timezone.now(),
    )


def endpoint_delete(*, client: ApiClient, endpoint_id: str) -> bool:
    """Delete ``client``'s endpoint and the deliveries not yet sent (the contract drops
    them); False when the client has no such endpoint."""
    with transaction.atomic():
        deleted, _ = Endpoint.objects.filter(client=client, id=endpoint_id).delete()
    return bool(deleted)


def endpoint_describe(endpoint: Endpoint) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {"id": endpoint.id, "url": endpoint.url, "events": list(endpoint.events),
            "created_at": iso(endpoint.created_at),
            "last_success_at": iso(endpoint.last_success_at),
            "last_failure_at": iso(endpoint.last_failure_at),
            "failing_since": iso(endpoint.failing_since)}


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to store: for every endpoint of ``app`` that wants ``type`` (presence),
    or only for the endpoints of ``client_id`` (``push.settled``: its own pushes)."""

    app: str
    type: str
    data: dict[str, Any]
    client_id: int | None = None


def encode_body(event_id: str, type_: str, created_ms: int, data: dict[str, Any]) -> str:
    """The call's body, encoded once (PROTOCOL.md section 7, "Calls")."""
    return json.dumps({"id": event_id, "type": type_, "created": created_ms, "data": data},
                      separators=(",", ":"), ensure_ascii=False)


def endpoints_for(app: str, type_: str, client_id: int | None) -> list[Endpoint]:
    qs = Endpoint.objects.filter(app=app)
    if client_id is not None:
        qs = qs.filter(client_id=client_id)
    elif type_ not in PRESENCE_EVENTS:
        return []
    # A JSON "contains" is not portable to SQLite: the lists are short, filter here.
    return [e for e in qs.only("id", "events") if type_ in e.events]


def events_emit(events: Sequence[NewEvent], *, now: float | None = None) -> int:
    """Store ``events`` and their deliveries (in the caller's transaction, if any); the
    number of deliveries made. An event no endpoint wants is not stored."""
    now = time.time() if now is None else now
    at = datetime.fromtimestamp(now, tz=UTC)
    wanted: dict[tuple[str, str, int | None], list[Endpoint]] = {}
    rows: list[Event] = []
    deliveries: list[Delivery] = []
    for new in events:
        key = (new.app, new.type, new.client_id)
        if key not in wanted:
            wanted[key] = endpoints_for(*key)
        targets = wanted[key]
        if not targets:
            continue
        event_id = new_id(now)
        rows.append(Event(id=event_id, app=new.app, type=new.type, created_at=at,
                          body=encode_body(event_id, new.type, int(now * 1000), new.data)))
        deliveries.extend(
            Delivery(event_id=event_id, endpoint_id=target.id, app=new.app, created_at=at,
                     next_attempt_at=at)
            for target in targets)
    if rows:
        with transaction.atomic():
            Event.objects.bulk_create(rows, batch_size=500)
            Delivery.objects.bulk_create(deliveries, batch_size=500)
    return len(deliveries)


def event_emit(new: NewEvent, *, now: float | None = None) -> int:
    return events_emit([new], now=now)


def deliveries_redeliver(ids: Iterable[int], *, now: datetime | None = None) -> int:
    """Send these deliveries again as soon as possible (the admin's action), whatever their
    state; a delivery in flight on a node finishes its attempt first."""
    now = now or timezone.now()
    return Delivery.objects.filter(id__in=list(ids)).update(
        state=DeliveryState.PENDING, next_attempt_at=now)




def events_prune(*, before: datetime, dry_run: bool = False) -> int:
    """Retention (``prunegateway``): events made before ``before`` with nothing left to
    send (their deliveries go with them), and the settled-push claims as old; the number of
    events. A pending delivery is never deleted: its retries end by themselves."""
    old = Event.objects.filter(created_at__lt=before).exclude(
        deliveries__state=DeliveryState.PENDING)
    if dry_run:
        return old.count()
    SettledPush.objects.filter(settled_at__lt=before).delete()
    _, per_model = Event.objects.filter(id__in=old.values("id")).delete()
    return per_model.get(Event._meta.label, 0)
