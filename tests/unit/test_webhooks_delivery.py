"""The outbox and the sender (PROTOCOL.md section 7): leases, backoff, failure after the
retry window, signatures, and one slow endpoint delaying no other. Clocks are injected and
the network is an ``httpx.MockTransport``: nothing sleeps."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from push_app.services import api_client_create
from webhooks import outbox, services
from webhooks.models import Delivery, DeliveryState, Endpoint
from webhooks.sender import WebhookSender
from webhooks.signing import signature, verify

pytestmark = [pytest.mark.django_db(transaction=True)]

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def endpoint(url: str = "http://127.0.0.1:9/a", *, name: str = "shop",
             events=("user.online",)) -> Endpoint:
    client = api_client_create(name=f"{name}-{url[-1]}")[0]
    with override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True):
        return services.endpoint_create(client=client, req=services.EndpointRequest(
            url=url, events=tuple(events)))


def emit(n: int = 1, *, now: float = T0) -> None:
    services.events_emit([services.NewEvent(app="default", type="user.online",
                                            data={"user": f"u{i}", "at": 1, "sessions": 1})
                          for i in range(n)], now=now)


def claim(node_id: str = "a", *, now: float = T0, room=None, limit: int = 100):
    return outbox.claim(node_id=node_id, now=now, room=room or {}, default_room=100,
                        limit=limit, lease_s=60)


def test_backoff_doubles_from_one_second_to_ten_minutes():
    assert [outbox.retry_delay_s(n) for n in (1, 2, 3, 4, 10, 11, 30)] == [
        1, 2, 4, 8, 512, 600, 600]


def test_a_lease_is_held_by_one_node_until_it_runs_out():
    endpoint()
    emit(3)
    first = claim("a")
    assert len(first) == 3
    assert claim("b") == []
    # Node a died: its leases run out, node b takes them over.
    taken = claim("b", now=T0 + 61)
    assert sorted(c.id for c in taken) == sorted(c.id for c in first)


def test_claims_keep_to_the_room_of_each_endpoint():
    slow = endpoint("http://127.0.0.1:9/s")
    fast = endpoint("http://127.0.0.1:9/f")
    emit(5)
    got = claim(room={slow.id: 2}, limit=100)
    per = {e: sum(1 for c in got if c.endpoint_id == e) for e in (slow.id, fast.id)}
    assert per == {slow.id: 2, fast.id: 5}
    assert claim(room={slow.id: 0, fast.id: 0}) == []


def test_a_failure_is_retried_with_backoff_then_marked_failed():
    endpoint()
    emit(1)
    now = T0
    with override_settings(GATEWAY_WEBHOOK_RETRY_HOURS=1):
        for attempt in range(1, 30):
            (item,) = claim(now=now)
            failed = outbox.complete([outbox.Outcome(item, ok=False, status=500,
                                                     excerpt="oops", at=now)], retry_hours=1)
            row = Delivery.objects.get()
            assert row.attempts == attempt and row.last_status == 500
            delay = outbox.retry_delay_s(attempt)
            if row.state == DeliveryState.FAILED:
                break
            assert failed == 0
            assert row.next_attempt_at.timestamp() == pytest.approx(now + delay)
            assert claim(now=now + delay - 0.5) == []  # not due yet
            now += delay
    # Attempts at 0, 1, 3, ... 1023 s (1 s doubling), then every 600 s (the cap): 1623,
    # 2223, 2823, 3423; the 16th would be at 4023 s, past the hour: the 15th was the last.
    assert row.state == DeliveryState.FAILED and row.attempts == 15
    assert Endpoint.objects.get().failing_since is not None


def test_a_redelivery_wins_over_an_attempt_in_flight():
    endpoint()
    emit(1)
    (item,) = claim()
    services.deliveries_redeliver([item.id])
    Delivery.objects.update(lease_token="", lease_until=None)
    outbox.complete([outbox.Outcome(item, ok=True, status=200, excerpt="", at=T0)],
                    retry_hours=24)
    assert Delivery.objects.get().state == DeliveryState.PENDING


def test_release_gives_back_what_a_restarted_node_held():
    endpoint()
    emit(2)
    claim("a")
    assert outbox.release(node_id="a") == 2
    assert len(claim("b")) == 2


# --- the sender ---------------------------------------------------------------------------

async def run_db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await sync_to_async(fn, thread_sensitive=False)(*args, **kwargs)


def sender_with(handler: Callable[[httpx.Request], Any], clock: Clock) -> WebhookSender:
    return WebhookSender(node_id="t", db=run_db, clock=clock,
                         transport=httpx.MockTransport(handler))


async def send_round(sender: WebhookSender) -> None:
    """One claim, its calls, their outcomes written (what ``run`` does in a loop)."""
    client = sender.poster()
    claimed = await sender.claim_once()
    for item in claimed:
        sender._start(client, item)
    await asyncio.gather(*list(sender._tasks))
    await sender.flush()
    await client.aclose()


@override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True)
async def test_calls_are_signed_and_carry_the_event_id():
    ep = await sync_to_async(endpoint)()
    await sync_to_async(emit)(1)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    await send_round(sender_with(handler, Clock()))
    (request,) = seen
    body = request.content
    event = json.loads(body)
    assert set(event) == {"id", "type", "created", "data"} and event["type"] == "user.online"
    assert request.headers["Gateway-Event-Id"] == event["id"]
    assert request.headers["Content-Type"] == "application/json"
    header = request.headers["Gateway-Signature"]
    assert header == signature(ep.secret, body, timestamp=int(T0))
    assert verify(ep.secret, body, header, now=int(T0))
    assert not verify(ep.secret, body + b" ", header, now=int(T0))
    assert not verify(ep.secret, body, header, now=int(T0) + 301)
    row = await Delivery.objects.aget()
    assert (row.state, row.attempts, row.last_status) == (DeliveryState.DELIVERED, 1, 204)


@override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True)
async def test_a_500_is_retried_after_the_backoff_and_then_delivered():
    await sync_to_async(endpoint)()
    await sync_to_async(emit)(1)
    answers = [httpx.Response(500, text="down for maintenance"), httpx.Response(200)]
    clock = Clock()
    sender = sender_with(lambda request: answers.pop(0), clock)
    await send_round(sender)
    row = await Delivery.objects.aget()
    assert (row.state, row.last_status, row.last_response) == (
        DeliveryState.PENDING, 500, "down for maintenance")
    await send_round(sender)  # not due yet: no call
    assert len(answers) == 1
    clock.now += 1.0
    await send_round(sender)
    row = await Delivery.objects.aget()
    assert (row.state, row.attempts, row.last_status) == (DeliveryState.DELIVERED, 2, 200)
    ep = await Endpoint.objects.aget()
    assert ep.failing_since is None and ep.last_success_at and ep.last_failure_at


async def test_private_addresses_are_refused_at_send_time():
    with override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True):
        await sync_to_async(endpoint)()
    await sync_to_async(emit)(1)
    calls: list[httpx.Request] = []
    await send_round(sender_with(lambda r: calls.append(r) or httpx.Response(200), Clock()))
    assert calls == []
    row = await Delivery.objects.aget()
    assert row.state == DeliveryState.PENDING and row.last_response.startswith("refused")


@override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True)
async def test_a_hanging_endpoint_delays_no_other():
    await sync_to_async(endpoint)("http://127.0.0.1:9/slow", name="slow")
    await sync_to_async(endpoint)("http://127.0.0.1:9/fast", name="fast")
    await sync_to_async(emit)(200)
    never = asyncio.Event()
    fast_calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal fast_calls
        if request.url.path == "/slow":
            await never.wait()
        fast_calls += 1
        return httpx.Response(200)

    sender = sender_with(handler, Clock())
    sender.concurrency, sender.min_room, sender.max_room = 4, 8, 8
    client = sender.poster()
    try:
        for _ in range(40):
            for item in await sender.claim_once():
                sender._start(client, item)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            await sender.flush()
            if fast_calls == 200:
                break
        assert fast_calls == 200
        # The slow lane holds its room and no more: bounded tasks, whatever its backlog.
        assert sender.held == {(await Endpoint.objects.aget(url__endswith="slow")).id: 8}
        assert len(sender._tasks) == 8
        for task in list(sender._tasks):
            task.cancel()
        await asyncio.gather(*sender._tasks, return_exceptions=True)
    finally:
        await client.aclose()


@override_settings(GATEWAY_WEBHOOK_ALLOW_PRIVATE=True)
async def test_a_receiver_down_for_ten_minutes_gets_everything_once_it_is_back():
    """Issue #15's fault: the receiver refuses connections for 10 minutes (clock injected),
    then answers: every event arrives, each once (nothing was 2xx before), and no backlog
    is left."""
    await sync_to_async(endpoint)()
    await sync_to_async(emit)(20)
    clock = Clock()
    delivered: list[str] = []
    attempts_while_down = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts_while_down
        if clock.now < T0 + 600:
            attempts_while_down += 1
            raise httpx.ConnectError("connection refused", request=request)
        delivered.append(json.loads(request.content)["id"])
        return httpx.Response(204)

    sender = sender_with(handler, clock)
    while clock.now < T0 + 600:  # down: rounds every 5 s, as a busy sender would run them
        await send_round(sender)
        clock.now += 5
    assert attempts_while_down >= 20 * 8  # 1 s doubling: about nine tries each in 10 min
    assert delivered == []
    for _ in range(200):  # back: within the backoff's 10 min cap, everything goes out
        await send_round(sender)
        if len(delivered) == 20:
            break
        clock.now += 5
    assert len(delivered) == 20 and len(set(delivered)) == 20
    assert clock.now <= T0 + 600 + 600
    pending = await Delivery.objects.exclude(state=DeliveryState.DELIVERED).acount()
    assert pending == 0
    backlog = await run_db(outbox.backlog, now=clock.now)
    assert (backlog.pending, backlog.oldest_age_s, backlog.failing_s) == (0, 0.0, {})
