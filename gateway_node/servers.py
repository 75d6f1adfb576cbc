"""The ASGI servers ``rungateway`` can run the gateway under.

Daphne is the default (the customer's choice). The choice lives here, behind
``rungateway --server``, so a faster server can be added without touching the app.

Daphne settings chosen against its traps:
- ``websocket_timeout=-1``: otherwise Daphne closes every WebSocket after 24 h.
- ``websocket_max_message_size`` limits outgoing frames too, so it is sized from the push
  payload limit; the contract's inbound limit (4013) is enforced by the consumer.
- A listen backlog of 2048 instead of the usual 50, for reconnect storms.
- Daphne walks every connection once a second (reaping finished application instances)
  and every two seconds (timeouts, keepalive pings), whether anything changed or not:
  here they visit only the connections they can act on (``gateway_node.daphne_walks``).
- Twisted formats an access-log line for every HTTP request and hands it to its global log,
  which nothing here reads (Daphne's own access log is off): skipped.
- Our own SIGTERM/SIGINT handling drains the node (4012 to every client) before the
  reactor stops; Daphne's own would drop connections without a close frame.
- A request line or header line longer than Twisted's 16 KiB line limit is answered 431
  (Twisted would drop the connection without a word), then the rest of the request is read
  and dropped for a moment before the close (``answer_oversized_header_lines``). Larger
  header sections made of shorter lines (16 KiB in all, or 500 headers) already get
  Twisted's 400.
- Twisted's form decoding of POST bodies is off: Daphne hands the raw body to the
  application and never reads the decoded arguments, yet Twisted parsed every POST's
  Content-Type through the ``email`` package first, a large share of Daphne's CPU on the
  push API.

Under either server the garbage collector is tuned once the application is loaded
(``settle_garbage_collector``), and the servers send no keepalive pings of their own: the
contract's heartbeat already has every client send a frame each interval (which keeps
proxies' and NATs' idle timers fresh) and closes a silent one with 4008, so protocol pings
would only add a timer, a frame and its answer per connection every 20 s.

uvicorn (``--server uvicorn``, the faster option): websockets' sans-I/O protocol, uvloop,
httptools, no per-message deflate (it costs CPU per frame for JSON this small), the same
message size limit and backlog as Daphne. A handshake that websockets refuses while parsing
it (a header line over 8 KiB, more than 128 headers: 431) gets that answer written
(``GatewayWebSocketProtocol``); uvicorn would leave it unsent and the connection open.
httptools sets no bound on a request's header section at all (2 MB of headers were
served): ``GatewayHttpProtocol`` answers 431 past ``MAX_HEADER_BYTES``, Twisted's bound.
The application's lifespan starts the node. uvicorn's own shutdown would close every
WebSocket with 1012 before the application hears of it, so the drain (4012) runs first, and
a signal only asks for that shutdown: uvicorn would otherwise re-raise it when done and the
process would not exit 0. Its ``send`` waits for a slow client: ``sessions_app.flow`` keeps
that wait off the node's delivery loop.

The figures behind these choices: docs/performance.md, "Why the server adapters are built
this way".
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import pprint
import signal
import socket
from collections.abc import Callable
from typing import Any

from gateway_core.conf import gateway_settings
from gateway_node.asgi import build_application
from gateway_node.daphne_walks import ChangedConnectionWalks
from gateway_node.node import GatewayNode

logger = logging.getLogger("gateway.server")
LISTEN_BACKLOG = 2048
#: After draining, how long close frames get to leave before the process exits.
DRAIN_FLUSH_S = 0.5


class ServerError(RuntimeError):
    """The server could not start (the port is taken, the address is wrong)."""


def run_daphne(*, host: str, port: int, node: GatewayNode,
               on_ready: Callable[[], None] | None = None,
               sock: socket.socket | None = None) -> None:
    """Serve until SIGTERM/SIGINT; on ``sock`` (already listening: a ``--workers``
    worker's SO_REUSEPORT socket) instead of binding ``host:port`` when given."""
    from daphne.server import Server  # installs Twisted's asyncio reactor: import first
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor  # the installed reactor's interfaces are not in its stubs

    application = build_application(node=lambda: node)

    plain_autobahn_log_fields()
    skip_twisted_form_parsing()
    skip_twisted_access_log()
    answer_oversized_header_lines()
    settle_garbage_collector()

    class GatewayDaphne(ChangedConnectionWalks, Server):
        listen_failure = ""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            #: The listening ports, closed when the drain starts.
            self.ports: list[Any] = []

        def listen_error(self, failure: Any) -> None:
            # Daphne logs and keeps the process alive; a node that cannot listen must exit.
            self.listen_failure = failure.getErrorMessage()
            reactor.callLater(0, reactor.stop)

        def listen_success(self, port: Any) -> None:
            super().listen_success(port)
            self.ports.append(port)
            if on_ready is not None:
                on_ready()

    max_message = max_message_bytes()
    interface = host.strip("[]").replace(":", r"\:")
    endpoint = f"tcp:port={port}:interface={interface}:backlog={LISTEN_BACKLOG}"
    if sock is not None:
        # Daphne's ``fd:`` endpoint adopts IPv4 sockets only (its ``domain`` stays a string).
        if sock.family != socket.AF_INET:
            raise ServerError("daphne adopts IPv4 listening sockets only; use an IPv4 host")
        # Twisted adopts (duplicates, then closes) the descriptor: it is no longer ours.
        endpoint = f"fd:fileno={sock.detach()}"
    server = GatewayDaphne(
        application=application,
        endpoints=[endpoint],
        signal_handlers=False,
        websocket_timeout=-1,
        websocket_max_message_size=max_message,
        websocket_max_frame_size=max_message,
        application_close_timeout=5,
        ping_interval=math.inf,  # no keepalive pings (module doc)
        verbosity=0,
    )

    async def shutdown() -> None:
        # No new connections while draining, as under uvicorn: a reconnect storm's attempts
        # were otherwise each accepted, handshaken and closed with 4012, half the event loop
        # of a draining node (docs/performance.md, "Kept pushes").
        for port in server.ports:
            port.stopListening()
        logger.info("draining node %s", node.node_id)
        try:
            await node.stop()
            await asyncio.sleep(DRAIN_FLUSH_S)
        finally:
            reactor.stop()

    background: set[asyncio.Task[None]] = set()

    def in_background(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    def started() -> None:
        loop = asyncio.get_event_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: in_background(shutdown()))
        in_background(node.ensure_started())

    reactor.callWhenRunning(started)
    server.run()
    if server.listen_failure:
        raise ServerError(server.listen_failure)


def run_uvicorn(*, host: str, port: int, node: GatewayNode,
                on_ready: Callable[[], None] | None = None,
                sock: socket.socket | None = None) -> None:
    """Serve under uvicorn until SIGTERM/SIGINT, then drain (see the module doc); on
    ``sock`` (already listening) instead of binding ``host:port`` when given."""
    import uvicorn

    application = build_application(node=lambda: node)

    settle_garbage_collector()
    if sock is None:
        sock = listen_socket(host, port)
    sock.setblocking(False)

    class GatewayUvicorn(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Only the flag: uvicorn's own handler also re-raises the signal after shutdown.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and on_ready is not None:
                on_ready()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for server in self.servers:
                server.close()  # no new connections while draining
            logger.info("draining node %s", node.node_id)
            try:
                await node.stop()
                await asyncio.sleep(DRAIN_FLUSH_S)
            finally:
                await super().shutdown(sockets=sockets)

    config = uvicorn.Config(
        application,
        ws=gateway_websocket_protocol(),
        loop="uvloop",
        http=gateway_http_protocol(),
        lifespan="on",
        ws_per_message_deflate=False,
        ws_max_size=max_message_bytes(),
        ws_ping_interval=None,  # no keepalive pings (module doc)
        backlog=LISTEN_BACKLOG,
        timeout_graceful_shutdown=10,
        log_config=None,  # Django's LOGGING stays in charge
        access_log=False,
        proxy_headers=False,  # like Daphne without --proxy-headers
        server_header=False,
    )
    server = GatewayUvicorn(config)
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits when the application cannot start
        if exc.code:
            raise ServerError(f"uvicorn stopped at startup (exit status {exc.code})") from exc
    finally:
        sock.close()


def plain_autobahn_log_fields() -> None:
    """Stop autobahn formatting debug lines nobody reads, per frame and per connection.

    ``WebSocketProtocol.sendData`` builds ``log.debug(..., func=hltype(...),
    peer=hlval(...), data_len=hlval(...))`` eagerly, logged or not; with ``click``
    importable (uvicorn requires it) each field goes through ``click.style``, on every
    frame. The fields stay as they are, uncoloured. Likewise every new connection
    pretty-printed its thirty-odd options for a debug line (``pformat``); the options are
    now formatted only if that line is ever written. (What each cost: docs/performance.md.)
    """
    from autobahn.websocket import protocol

    def plain(value: Any, *args: Any, **kwargs: Any) -> Any:
        return value

    module: Any = protocol
    module.hltype = module.hlval = plain
    module.pformat = LazyPformat
    # The one caller that must return text (``Timings.__str__``) keeps the real thing.
    module.Timings.__str__ = lambda self: pprint.pformat(self._timings)


class LazyPformat:
    """``pprint.pformat(value)``, run when the result is turned into text."""

    __slots__ = ("value",)

    def __init__(self, value: Any, *args: Any, **kwargs: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return pprint.pformat(self.value)

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def skip_twisted_form_parsing() -> None:
    """Turn off Twisted's decoding of form POSTs, which Daphne never uses (module doc).

    ``Request.__init__`` sets ``_parsePOSTFormSubmission`` per instance from an argument
    Daphne does not pass, so a class-level property that ignores the assignment is the one
    place to turn it off.
    """
    from daphne.http_protocol import WebRequest

    request_class: Any = WebRequest
    request_class._parsePOSTFormSubmission = property(
        lambda self: False, lambda self, value: None
    )


def skip_twisted_access_log() -> None:
    """Skip Twisted's access-log line per HTTP request (module doc): it formats the line and
    hands it to Twisted's global log, which nothing here observes."""
    from daphne.http_protocol import HTTPFactory

    factory_class: Any = HTTPFactory
    factory_class.log = lambda self, request: None


#: What a request line or header line over Twisted's line limit gets (module doc).
HEADERS_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 32\r\n"
    b"Connection: close\r\n\r\nRequest header fields too large\n"
)
#: How long the rest of a refused request is read and dropped before the connection is cut.
LINGER_S = 2.0
#: A request's header section under uvicorn: Twisted's ``totalHeadersSize``, so that both
#: servers hold a client to the same bound.
MAX_HEADER_BYTES = 16384


def answer_oversized_header_lines() -> None:
    """Answer 431 to a request line or header line over Twisted's line limit.

    Twisted's ``LineReceiver.lineLengthExceeded`` drops the connection without a response,
    so a client (or a proxy, which then reports a 502) cannot tell an oversized handshake
    from a dead node. The answer is written, the write side closed, and what the client
    is still sending read and dropped for up to ``LINGER_S``: closing a socket with unread
    input makes the kernel send a reset, which can destroy the answer before it is read.
    """
    from twisted.internet import reactor as _reactor
    from twisted.web import http

    reactor: Any = _reactor  # the installed reactor's interfaces are not in its stubs

    def line_length_exceeded(self: Any, line: bytes) -> None:
        transport = self.transport
        self._buffer = b""
        self.dataReceived = _drop
        transport.write(HEADERS_TOO_LARGE)
        transport.loseWriteConnection()
        reactor.callLater(LINGER_S, transport.abortConnection)

    channel: Any = http.HTTPChannel
    channel.lineLengthExceeded = line_length_exceeded


def _drop(data: bytes) -> None:
    pass


def gateway_websocket_protocol() -> type[Any]:
    """uvicorn's websockets (sans-I/O) protocol, writing the handshake refusals websockets
    makes while parsing the request (module doc)."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self.handshake_initiated and self.conn.handshake_exc is not None:
                # websockets queued its answer (431) or an end of stream, and produced no
                # request event, the only point where uvicorn writes what it queued.
                self.transport.write(b"".join(self.conn.data_to_send()))
                self.transport.close()

    return GatewayWebSocketProtocol


def gateway_http_protocol() -> type[Any]:
    """uvicorn's httptools protocol with a bound on the header section (module doc)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GatewayHttpProtocol(HttpToolsProtocol):
        """Two counts of the current request's header section, so that neither a slow
        stream nor one read can carry more than the bound:

        - ``streamed_bytes``: whole reads that arrived while the headers were still
          incomplete (httptools keeps a header that is still arriving in its own buffer
          and says nothing of it until it ends, so a 2 MB header line only shows here);
        - ``header_bytes``: the request line and headers as httptools parsed them, checked
          once the section is complete (many headers, or a whole request in one read).
        """

        streamed_bytes = 0
        header_bytes = 0
        reading_headers = True
        #: Header sections completed on this connection (keep-alive: several).
        sections = 0
        refused = False

        def data_received(self, data: bytes) -> None:
            if self.refused:
                return  # lingering: read and drop (see answer_oversized_header_lines)
            was_reading_headers = self.reading_headers
            sections_before = self.sections
            super().data_received(data)
            # A read that completed the headers may carry a body (or a whole request),
            # one that ended a body may carry the next request's start: only reads wholly
            # within one header section are streamed header bytes.
            if (was_reading_headers and self.reading_headers
                    and self.sections == sections_before and not self.refused
                    and not self.transport.is_closing()):
                self.streamed_bytes += len(data)
                if self.streamed_bytes > MAX_HEADER_BYTES:
                    self.refuse()

        def refuse(self) -> None:
            self.refused = True
            self.transport.write(HEADERS_TOO_LARGE)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.header_bytes = 0

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self.header_bytes += len(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            super().on_header(name, value)
            self.header_bytes += len(name) + len(value) + 4  # ": " and CRLF

        def on_headers_complete(self) -> None:
            if self.refused:
                return
            if self.header_bytes > MAX_HEADER_BYTES:
                self.refuse()  # and no request cycle: the application never sees it
                return
            self.reading_headers = False
            self.sections += 1
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self.refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self.refused:
                return
            super().on_message_complete()
            # The next request on this connection (keep-alive) counts from here.
            self.reading_headers = True
            self.streamed_bytes = 0

    return GatewayHttpProtocol


#: Young-generation threshold: collections of the youngest objects come ten times less
#: often than CPython's default of 700 allocations, and each stays short.
GC_GEN0_THRESHOLD = 7_000


def settle_garbage_collector() -> None:
    """Keep the collector's pauses off the delivery path.

    What start-up allocated (Django, the URLconf, the app registry: objects that live as
    long as the process) is frozen out of every future collection, so a full collection
    walks the connections' objects only; and young collections run every 7,000 allocations
    instead of 700, fewer pauses for every frame to wait behind. (Not measured on its own:
    see docs/performance.md.)
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def max_message_bytes() -> int:
    """The WebSocket message size limit: pushes up to the payload limit must fit."""
    return max(1024 * 1024, 2 * gateway_settings.max_payload_bytes + 4096)


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` with ``LISTEN_BACKLOG``; ServerError if not."""
    sock: socket.socket | None = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise ServerError(str(exc)) from exc
    return sock


SERVERS = {"daphne": run_daphne, "uvicorn": run_uvicorn}
