"""Daphne's connection bookkeeping done when a connection changes (gateway_node.daphne_walks),
on Daphne's real ``Server`` with stand-in protocols; the clock is injected, nothing sleeps."""

from __future__ import annotations

import asyncio
from typing import Any

from daphne.server import Server

from gateway_node.daphne_walks import ChangedConnectionWalks


class Walks(ChangedConnectionWalks, Server):
    now = 0.0

    def __init__(self, application: Any) -> None:
        super().__init__(application=application, endpoints=["tcp:port=0"])
        self.connections = {}  # as Server.run() starts it
        self.scheduled: list[tuple[float, Any]] = []
        self.clock = lambda: self.now

    def call_later(self, delay_s: float, fn: Any) -> None:
        self.scheduled.append((delay_s, fn))


class HttpRequest:
    def __init__(self) -> None:
        self.failures: list[BaseException] = []

    def handle_exception(self, exc: BaseException) -> None:
        self.failures.append(exc)


class WebSocket(HttpRequest):
    STATE_CONNECTING, STATE_OPEN = 0, 1

    def __init__(self) -> None:
        super().__init__()
        self.state = self.STATE_CONNECTING
        self.checks = 0

    def check_timeouts(self) -> None:
        self.checks += 1


class App:
    """An application whose instances run until ``finish`` (or raise ``fail``)."""

    def __init__(self) -> None:
        self.finish = asyncio.Event()
        self.fail: BaseException | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.finish.wait()
        if self.fail is not None:
            raise self.fail


def opened(server: Walks, protocol: Any) -> None:
    server.protocol_connected(protocol)
    server.create_application(protocol, {"type": "http"})


async def settle() -> None:
    for _ in range(3):  # the instance's last step, then its done callbacks
        await asyncio.sleep(0)


async def test_a_connection_is_forgotten_when_closed_and_its_instance_done_either_order():
    app = App()
    server = Walks(app)
    answered_first, closed_first = HttpRequest(), HttpRequest()
    opened(server, answered_first)
    opened(server, closed_first)
    server.protocol_disconnected(closed_first)  # its instance still runs
    assert closed_first in server.connections and server.closing == {closed_first}
    app.finish.set()
    await settle()
    assert closed_first not in server.connections and server.closing == set()
    assert "application_instance" not in server.connections[answered_first]
    server.protocol_disconnected(answered_first)
    server.protocol_disconnected(answered_first)  # Daphne may say it twice
    assert server.connections == {}


async def test_a_failed_instance_is_logged_and_its_open_connection_told(caplog):
    app = App()
    app.fail = ValueError("boom")
    server = Walks(app)
    request = HttpRequest()
    opened(server, request)
    app.finish.set()
    await settle()
    assert [str(e) for e in request.failures] == ["boom"]
    assert "Exception inside application: boom" in caplog.text
    server.protocol_disconnected(request)
    assert server.connections == {}


async def test_an_instance_outliving_its_connection_is_cancelled_after_the_close_timeout():
    server = Walks(App())
    request = HttpRequest()
    opened(server, request)
    instance = server.connections[request]["application_instance"]
    server.protocol_disconnected(request)
    closed_at = server.connections[request]["disconnected"]  # Daphne's own time.time()
    server.now = closed_at + server.application_close_timeout - 0.5
    server.application_checker()
    await settle()
    assert not instance.done() and request in server.connections
    server.now = closed_at + server.application_close_timeout + 0.5
    server.application_checker()
    await settle()
    assert instance.cancelled() and server.connections == {} and server.closing == set()
    assert [delay for delay, _ in server.scheduled] == [1, 1]


async def test_the_timeout_walk_visits_only_handshakes_still_open():
    server = Walks(App())
    handshaking, answered, request = WebSocket(), WebSocket(), HttpRequest()
    for protocol in (handshaking, answered, request):
        server.protocol_connected(protocol)
    answered.state = WebSocket.STATE_OPEN
    server.timeout_checker()
    assert (handshaking.checks, answered.checks) == (1, 1)
    assert server.handshakes == {handshaking}
    server.timeout_checker()
    assert (handshaking.checks, answered.checks) == (2, 1)
    server.protocol_disconnected(handshaking)
    server.timeout_checker()
    assert server.handshakes == set() and server.scheduled[-1][0] == 2

