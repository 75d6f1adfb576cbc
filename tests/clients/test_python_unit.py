"""The Python package without a server: its policies, the client on a fake connection and a
fake clock (no sleeping: time moves when the test says), and the REST client on httpx's
mock transport. gateway.js's own unit tests run from ``test_js_unit.py``."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from gateway_client import (
    Backoff,
    GatewayAPI,
    GatewayAPIError,
    GatewayClient,
    RecentIds,
    refresh_delay_s,
    token_exp,
)

START = 1_700_000_000.0


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


class FakeClock:
    """``time`` and ``sleep`` on a clock that moves only in ``advance``."""

    def __init__(self) -> None:
        self.now = START
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, delay_s: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + delay_s, fut)
        self.sleepers.append(entry)
        try:
            await fut
        finally:
            self.sleepers.remove(entry)

    def pending(self) -> list[float]:
        return sorted(at - self.now for at, fut in self.sleepers if not fut.done())

    async def advance(self, delta_s: float) -> None:
        until = self.now + delta_s
        for _ in range(10_000):
            await settle()
            due = sorted((e for e in self.sleepers if e[0] <= until and not e[1].done()),
                         key=lambda e: e[0])
            if not due:
                break
            self.now = max(self.now, due[0][0])
            due[0][1].set_result(None)
        self.now = until
        await settle()


class FakeWS:
    """A connection the test plays the server of."""

    def __init__(self, url: str) -> None:
        self.query = parse_qs(urlsplit(url).query)
        self.sent: list[dict[str, Any]] = []
        self.inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.close_code: int | None = None
        self.close_reason = ""

    def __aiter__(self) -> FakeWS:
        return self

    async def __anext__(self) -> str:
        item = await self.inbox.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def send(self, text: str) -> None:
        if self.close_code is None:
            self.sent.append(json.loads(text))

    async def close(self, code: int = 1000) -> None:
        self.server_close(code)

    # the server's side
    def frame(self, frame: dict[str, Any]) -> None:
        self.inbox.put_nowait(json.dumps(frame))

    def welcome(self, interval: int = 25, timeout: int = 60) -> None:
        self.frame({"type": "welcome", "session": "s", "node": "n", "user": "u1",
                    "heartbeat": {"interval": interval, "timeout": timeout}})

    def server_close(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
            self.inbox.put_nowait(None)

    def acks(self) -> list[str]:
        return [f["id"] for f in self.sent if f["type"] == "ack"]


def jwt_with_exp(exp: float) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
    return f"{part({'alg': 'HS256'})}.{part({'sub': 'u1', 'exp': int(exp)})}.sig"


def push(push_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "push", "id": push_id, "topic": None, "data": push_id, "ts": 1, **extra}


class Harness:
    def __init__(self, **kwargs: Any) -> None:
        self.clock = FakeClock()
        self.conns: list[FakeWS] = []
        kwargs.setdefault("token", "t0")
        self.client = GatewayClient("ws://gw.test/ws/?x=1", clock=self.clock.time,
                                    sleep=self.clock.sleep, random=lambda: 1.0,
                                    connect=self.connect, **kwargs)
        self.task: asyncio.Task[None] | None = None

    async def connect(self, url: str, **kwargs: Any) -> FakeWS:
        ws = FakeWS(url)
        self.conns.append(ws)
        return ws

    async def start(self) -> FakeWS:
        self.task = asyncio.create_task(self.client.run())
        await settle()
        return self.conns[-1]

    async def stop(self) -> None:
        await self.client.close()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


# --- policies ----------------------------------------------------------------------------

def test_backoff_is_full_jitter_doubling_from_half_a_second_to_30_and_resets():
    rand = [1.0]
    backoff = Backoff(random=lambda: rand[0])
    assert [backoff.next() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    rand[0] = 0.25
    assert backoff.next() == 7.5
    backoff.closed_after(29.9)
    assert backoff.next() == 7.5
    backoff.closed_after(30.0)
    assert backoff.next() == 0.125


def test_the_dedupe_memory_is_bounded_and_forgets_the_oldest():
    ids = RecentIds(3)
    for push_id in "abcdb":
        ids.add(push_id)
    assert len(ids) == 3 and "a" not in ids and "d" in ids and "b" in ids


def test_refresh_timing_and_token_exp():
    assert refresh_delay_s(START + 3600, START) == 3590
    assert refresh_delay_s(START + 20, START) == pytest.approx(16)
    assert refresh_delay_s(START - 1, START) == 0
    assert token_exp(jwt_with_exp(START)) == START
    assert token_exp("not.a-token") is None and token_exp("") is None


# --- the client on a fake connection -----------------------------------------------------

async def test_pushes_are_acked_after_the_handler_and_repeats_never_reach_it_again():
    h = Harness()
    seen: list[str] = []
    gate = asyncio.Event()

    @h.client.on_push
    async def handle(p: Any) -> None:
        seen.append(p.id)
        if p.id == "p1":
            await gate.wait()

    ws = await h.start()
    ws.welcome()
    ws.frame(push("p1"))
    ws.frame(push("p2"))
    await settle()
    assert (seen, ws.acks()) == (["p1"], [])
    gate.set()
    await settle()
    assert (seen, ws.acks()) == (["p1", "p2"], ["p1", "p2"])
    ws.frame(push("p1", redelivered=True))
    await settle()
    assert (seen, ws.acks()) == (["p1", "p2"], ["p1", "p2", "p1"])
    assert h.client.last_id == "p2"
    await h.stop()
    assert h.client.state == "closed"


async def test_a_handler_that_raises_leaves_the_push_unacked_and_since_unmoved():
    h = Harness()

    @h.client.on_push
    def handle(p: Any) -> None:
        if p.id == "bad":
            raise ValueError("boom")

    ws = await h.start()
    ws.welcome()
    ws.frame(push("ok"))
    ws.frame(push("bad"))
    await settle()
    assert ws.acks() == ["ok"] and h.client.last_id == "ok"
    await h.stop()


async def test_heartbeat_at_the_welcome_interval_and_a_silent_server_is_dropped():
    h = Harness()
    ws = await h.start()
    ws.welcome(interval=5, timeout=12)
    await h.clock.advance(4.9)
    assert [f for f in ws.sent if f["type"] == "ping"] == []
    await h.clock.advance(0.1)
    assert len([f for f in ws.sent if f["type"] == "ping"]) == 1
    await h.clock.advance(10)  # 15 s without a frame from the server: past the timeout
    assert ws.close_code is not None
    assert len(h.conns) == 1 and h.clock.pending() == [0.5]
    await h.stop()


async def test_reconnects_with_backoff_and_since_and_at_once_after_4012():
    h = Harness()
    ws = await h.start()
    ws.welcome()
    ws.frame(push("p7"))
    await settle()
    ws.server_close(1006)
    await settle()
    assert h.clock.pending() == [0.5]
    await h.clock.advance(0.5)
    assert len(h.conns) == 2 and h.conns[1].query["since"] == ["p7"]
    assert h.conns[1].query["x"] == ["1"] and h.conns[1].query["token"] == ["t0"]
    h.conns[1].server_close(1006)  # never welcomed: the next ceiling doubles
    await settle()
    assert h.clock.pending() == [1.0]
    await h.clock.advance(1.0)
    h.conns[2].welcome()
    await settle()
    h.conns[2].server_close(4012)
    await settle()
    assert len(h.conns) == 4, "4012: reconnected at once"
    await h.stop()


@pytest.mark.parametrize("code", [4009, 4010])
async def test_4009_and_4010_end_run_with_the_close_code(code: int):
    h = Harness(get_token=lambda: asyncio.sleep(0, "t1"))
    errors: list[Exception] = []
    h.client.on_error(errors.append)
    ws = await h.start()
    ws.welcome()
    ws.server_close(code)
    assert h.task is not None
    await asyncio.wait_for(h.task, 5)
    assert h.client.close_code == code and h.client.state == "closed"
    assert [getattr(e, "code", None) for e in errors] == [code]
    assert len(h.conns) == 1


async def test_4011_asks_for_a_new_token_and_a_bare_token_stops():
    tokens = iter(["t1", "t2"])

    async def get_token() -> str:
        return next(tokens)

    h = Harness(token=None, get_token=get_token)
    ws = await h.start()
    assert ws.query["token"] == ["t1"]
    ws.welcome()
    ws.server_close(4011)
    await h.clock.advance(0.5)
    assert h.conns[1].query["token"] == ["t2"]
    await h.stop()

    bare = Harness(token="t0")
    ws = await bare.start()
    ws.welcome()
    ws.server_close(4011)
    assert bare.task is not None
    await asyncio.wait_for(bare.task, 5)
    assert bare.client.close_code == 4011 and len(bare.conns) == 1


async def test_refresh_ten_seconds_before_exp_on_the_same_connection():
    later = [jwt_with_exp(START + 240)]

    async def get_token() -> str:
        return later.pop()

    h = Harness(token=jwt_with_exp(START + 120), get_token=get_token)
    ws = await h.start()
    ws.welcome(interval=1000, timeout=2000)
    await h.clock.advance(109.9)
    assert [f for f in ws.sent if f["type"] == "refresh"] == []
    await h.clock.advance(0.1)
    refresh = [f for f in ws.sent if f["type"] == "refresh"]
    assert len(refresh) == 1 and token_exp(refresh[0]["token"]) == START + 240
    ws.frame({"type": "refreshed", "exp": START + 240})
    await settle()
    assert 120.0 in h.clock.pending()  # the next refresh, 10 s before the new exp
    assert len(h.conns) == 1
    await h.stop()


# --- the REST client on a mock transport -------------------------------------------------

class Server:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) for r in self.requests]


def api_on(server: Server, slept: list[float], **kwargs: Any) -> GatewayAPI:
    async def sleep(delay_s: float) -> None:
        slept.append(delay_s)

    return GatewayAPI("http://gw.test", key="k", transport=httpx.MockTransport(server),
                      sleep=sleep, **kwargs)


ACCEPTED = httpx.Response(202, json={"id": "p1", "status": "accepted", "targets": 1})


async def test_429_and_503_are_retried_honouring_retry_after_with_one_key():
    server = Server([httpx.Response(429, headers={"Retry-After": "3"}, json={"error": "x"}),
                     httpx.Response(503, json={"error": "broker_unavailable", "detail": "d"}),
                     httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), ACCEPTED])
    slept: list[float] = []
    async with api_on(server, slept) as api:
        assert (await api.push(users=["u1"], data=1))["id"] == "p1"
    assert slept == [3.0, 1.0, 2.0, 4.0]
    keys = {b["idempotency_key"] for b in server.bodies()}
    assert len(keys) == 1 and None not in keys
    assert server.requests[0].headers["Authorization"] == "Token k"


async def test_at_most_five_attempts_then_the_error():
    server = Server([httpx.Response(503, json={"error": "unavailable", "detail": "db"})] * 5)
    slept: list[float] = []
    async with api_on(server, slept) as api:
        with pytest.raises(GatewayAPIError) as caught:
            await api.push(broadcast=True, data=1, idempotency_key="mine")
    assert (caught.value.status, caught.value.error, caught.value.detail) == (
        503, "unavailable", "db")
    assert slept == [0.5, 1.0, 2.0, 4.0] and len(server.requests) == 5
    assert {b["idempotency_key"] for b in server.bodies()} == {"mine"}


async def test_other_4xx_raise_at_once_with_status_error_detail_and_fields():
    server = Server([httpx.Response(400, json={"error": "invalid", "detail": "bad users",
                                               "fields": {"users": ["x"]}})])
    slept: list[float] = []
    async with api_on(server, slept) as api:
        with pytest.raises(GatewayAPIError) as caught:
            await api.push(users=["bad user"], data=1)
    err = caught.value
    assert (err.status, err.error, err.detail, err.fields) == (
        400, "invalid", "bad users", {"users": ["x"]})
    assert slept == [] and len(server.requests) == 1


async def test_every_batch_item_gets_a_key_unless_given_and_the_other_calls():
    server = Server([httpx.Response(202, json={"results": []}), httpx.Response(200, json={}),
                     httpx.Response(202), httpx.Response(201, json={"token": "t"}),
                     httpx.Response(200, json={"results": []}), httpx.Response(204)])
    slept: list[float] = []
    async with api_on(server, slept) as api:
        await api.push_batch([{"users": ["a"], "data": 1},
                              {"users": ["b"], "data": 2, "idempotency_key": "given"}])
        await api.recipients("p1", state="acked")
        assert await api.disconnect("u1", reason="bye") is None
        assert await api.token("u1", ttl=60) == {"token": "t"}
        await api.webhooks.list()
        await api.webhooks.delete("w1")
    batch = json.loads(server.requests[0].content)["pushes"]
    assert batch[1]["idempotency_key"] == "given"
    assert batch[0]["idempotency_key"] and batch[0]["idempotency_key"] != "given"
    assert [(r.method, r.url.path, r.url.query) for r in server.requests] == [
        ("POST", "/api/v1/push/batch", b""), ("GET", "/api/v1/push/p1/recipients", b"state=acked"),
        ("POST", "/api/v1/users/u1/disconnect", b""), ("POST", "/api/v1/tokens", b""),
        ("GET", "/api/v1/webhooks", b""), ("DELETE", "/api/v1/webhooks/w1", b""),
    ]
