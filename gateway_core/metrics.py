"""Prometheus metrics of the gateway (the list, and what each means: docs/monitoring.md).

Every metric carries a ``node`` label so that a cluster's metrics stay apart even when
scraped through one address, and every metric that counts users, pushes or connections an
``app`` label (PROTOCOL.md section 9). Labels are bounded: never a user id, session id or
push id; close codes outside the known set count as ``other``; ``client`` is an API client's
name and ``app`` an app's id, bounded by the clients and apps an operator created (a token
naming an unknown app never becomes a label: it is refused first).

Several processes, one node: with ``PROMETHEUS_MULTIPROC_DIR`` set (the same directory
for every process of the node: daphne, ``runconsumer``), prometheus_client keeps each
process's values in memory-mapped files there and any process's ``/metrics`` answers the
sum for the whole node. Without it each process exposes only its own metrics
(``rungateway`` is one process, so it needs nothing). Gauges are therefore never
``set_function`` gauges (those cannot cross processes): samplers registered with
``bind_gauges`` set them before every scrape and every half second.

Hot paths use ``bound(node_id)``: the labelled children of one node, resolved once, so a
frame or a delivery costs one ``inc``/``observe`` and no label lookup.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import glob
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

logger = logging.getLogger("gateway.metrics")

#: Set (by the environment, before prometheus_client is imported) for a node of several
#: processes; prometheus_client reads the same variable.
MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if MULTIPROC_DIR:
    os.makedirs(MULTIPROC_DIR, exist_ok=True)

# The *_created series double the scrape for no alerting value.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
_N = ["node"]
_NA = ["node", "app"]
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# --- Connections -----------------------------------------------------------------------
CONNECTIONS = Gauge(
    "gateway_connections", "Open WebSocket connections, per app.", _NA, registry=REGISTRY,
    multiprocess_mode="livesum",
)
USERS = Gauge(
    "gateway_users",
    "Users with at least one open connection, per app (summed over a node's web processes).",
    _NA, registry=REGISTRY, multiprocess_mode="livesum",
)
CONNECTIONS_CEILING = Gauge(
    "gateway_connections_ceiling",
    "Connections this node is sized for (GATEWAY_CONNECTIONS_CEILING; 0: not set).", _N,
    registry=REGISTRY, multiprocess_mode="livemax",
)
CONNECTS = Counter(
    "gateway_connects_total", "Accepted, authenticated connections.", _NA, registry=REGISTRY
)
DISCONNECTS = Counter(
    "gateway_disconnects_total", "Closed connections by close code.", [*_NA, "code"],
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "gateway_auth_failures_total", "Handshakes closed with 4001.", _N, registry=REGISTRY
)
HEARTBEAT_TIMEOUTS = Counter(
    "gateway_heartbeat_timeouts_total", "Connections closed by the heartbeat sweep (4008).",
    _NA, registry=REGISTRY,
)
FRAMES = Counter(
    "gateway_frames_received_total", "Client frames by type (ping, ack, bad_ack, bad, binary).",
    [*_N, "type"], registry=REGISTRY,
)

# --- Pushes and the broker -------------------------------------------------------------
PUSHES = Counter(
    "gateway_pushes_total",
    "Pushes through the API by API client and status (accepted, repeated, rejected: "
    "invalid, unavailable: 503).",
    [*_NA, "client", "status"], registry=REGISTRY,
)
PUBLISHED = Counter(
    "gateway_broker_published_total", "Messages the broker accepted.", _N, registry=REGISTRY
)
BROKER_ERRORS = Counter(
    "gateway_broker_errors_total", "Broker failures by operation (publish, consume).",
    [*_N, "op"], registry=REGISTRY,
)
PUBLISH_LATENCY = Histogram(
    "gateway_broker_publish_seconds", "Time for the broker to accept one message.", _N,
    registry=REGISTRY, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
RELAY_BACKLOG = Gauge(
    "gateway_relay_backlog", "Pushes accepted by this node and not yet published.", _N,
    registry=REGISTRY, multiprocess_mode="livesum",
)
RELAY_OLDEST = Gauge(
    "gateway_relay_oldest_push_age_seconds",
    "Age of the oldest push waiting in the relay (0 when none waits).", _N,
    registry=REGISTRY, multiprocess_mode="livemax",
)

# --- Delivery --------------------------------------------------------------------------
CONSUMED = Counter(
    "gateway_messages_consumed_total",
    "Broker messages handled by this node's delivery side, by kind (push, control).",
    [*_N, "kind"], registry=REGISTRY,
)
FORWARDED = Counter(
    "gateway_messages_forwarded_total",
    "Broker messages runconsumer forwarded to the node's web processes.", _N,
    registry=REGISTRY,
)
SKIPPED = Counter(
    "gateway_messages_skipped_total",
    "Consumed messages not delivered: no_local_session, stale, duplicate, expired, malformed, "
    "failed (an error while delivering it, logged).",
    [*_N, "reason"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "gateway_deliveries_total", "Push frames written to connections.", _NA, registry=REGISTRY
)
PUSH_LATENCY = Histogram(
    "gateway_push_latency_seconds",
    "From acceptance by the API to the frame handed to the socket, per push and node.",
    _NA,
    registry=REGISTRY,
    buckets=_LATENCY_BUCKETS,
)
CHANNEL_LAYER_LAG = Histogram(
    "gateway_channel_layer_lag_seconds",
    "From runconsumer forwarding a message to a web process receiving it.", _N,
    registry=REGISTRY, buckets=_LATENCY_BUCKETS,
)

# --- Processes -------------------------------------------------------------------------
EVENT_LOOP_LAG = Histogram(
    "gateway_event_loop_lag_seconds",
    "How late the event loop woke a periodic sleep: time the loop was busy elsewhere.",
    [*_N, "role"], registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PROCESSES = Gauge(
    "gateway_processes", "Live processes of this node by role (all, web, consumer).",
    [*_N, "role"], registry=REGISTRY, multiprocess_mode="livesum",
)
LOOP_RESTARTS = Counter(
    "gateway_loop_restarts_total",
    "Times one of the node's loops (consume, channel-layer, relay, housekeeping) ended by "
    "itself and was restarted by its supervisor.",
    [*_N, "loop"], registry=REGISTRY,
)
LOOP_RUNNING = Gauge(
    "gateway_loop_running",
    "1 while the loop runs, 0 while its supervisor waits to restart it (/healthz is 503 "
    "while a delivery loop is down).",
    [*_N, "loop"], registry=REGISTRY, multiprocess_mode="livemin",
)
SESSION_FAILURES = Counter(
    "gateway_session_failures_total",
    "Connections dropped because a write to them (write) or the handling of their frame "
    "(handler) failed unexpectedly; each is closed and forgotten, the others go on.",
    [*_N, "where"], registry=REGISTRY,
)

# --- Webhooks (PROTOCOL.md section 7) ----------------------------------------------------
WEBHOOK_CALLS = Counter(
    "gateway_webhook_calls_total",
    "Webhook calls this node made, by result: ok (2xx), status (another answer), timeout, "
    "error (no answer: refused, reset), refused (the address may not be called).",
    [*_N, "result"], registry=REGISTRY,
)
WEBHOOK_LATENCY = Histogram(
    "gateway_webhook_call_seconds", "From sending a webhook call to its answer (or timeout).",
    _N, registry=REGISTRY, buckets=(*_LATENCY_BUCKETS, 15),
)
WEBHOOK_FAILED = Counter(
    "gateway_webhook_deliveries_failed_total",
    "Webhook deliveries given up after GATEWAY_WEBHOOK_RETRY_HOURS of retries.", _N,
    registry=REGISTRY,
)
WEBHOOK_EVENTS = Counter(
    "gateway_webhook_events_total",
    "Webhook events this node stored in the outbox, by type (one per transition or push, "
    "however many endpoints want it).",
    [*_NA, "type"], registry=REGISTRY,
)
WEBHOOK_BACKLOG = Gauge(
    "gateway_webhook_backlog",
    "Webhook deliveries not yet sent, cluster-wide (read from the database by each node).",
    _N, registry=REGISTRY, multiprocess_mode="livemax",
)
WEBHOOK_OLDEST = Gauge(
    "gateway_webhook_oldest_undelivered_age_seconds",
    "Age of the oldest webhook delivery not yet sent, cluster-wide (0 when none waits).",
    _N, registry=REGISTRY, multiprocess_mode="livemax",
)
WEBHOOK_FAILING = Gauge(
    "gateway_webhook_endpoint_failing_seconds",
    "Per API client, how long its longest-failing webhook endpoint has failed every call "
    "(0: none failing).",
    [*_N, "client"], registry=REGISTRY, multiprocess_mode="livemax",
)
RECIPIENT_OUTCOMES = Counter(
    "gateway_push_recipient_outcomes_total",
    "Targeted pushes' recipients by outcome once the push settled (acked, delivered, "
    "offline, expired, dropped), per API client: acked / all is the client's ack ratio.",
    [*_NA, "client", "outcome"], registry=REGISTRY,
)
TIME_TO_ACK = Histogram(
    "gateway_push_time_to_ack_seconds",
    "From a push's publication to a recipient's ack, per API client, observed when the "
    "push settled.",
    [*_NA, "client"], registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 86400),
)

FRAME_TYPES = ("ping", "ack", "bad", "bad_ack", "binary")
SKIP_REASONS = ("no_local_session", "stale", "duplicate", "expired", "malformed", "failed")
MESSAGE_KINDS = ("push", "control")
PUSH_STATUSES = ("accepted", "repeated", "rejected", "unavailable")
#: Close codes counted under their own label; any other code counts as ``other``.
KNOWN_CLOSE_CODES = frozenset(
    [*range(1000, 1016), 4001, 4003, 4008, 4009, 4010, 4011, 4012, 4013, 4029, 4030]
)


def close_code_label(code: int) -> str:
    """A bounded label for a close code: clients choose theirs freely."""
    return str(code) if code in KNOWN_CLOSE_CODES else "other"


class AppMetrics:
    """The children of the per-app metrics of one node and app, resolved once."""

    __slots__ = ("connects", "deliveries", "heartbeat_timeouts", "push_latency")

    def __init__(self, node_id: str, app: str) -> None:
        self.connects = CONNECTS.labels(node_id, app)
        self.heartbeat_timeouts = HEARTBEAT_TIMEOUTS.labels(node_id, app)
        self.deliveries = DELIVERIES.labels(node_id, app)
        self.push_latency = PUSH_LATENCY.labels(node_id, app)


#: The app every v1 install has (``gateway_core.tenancy.DEFAULT_APP``): its series exist from
#: the start.
_DEFAULT_APP = "default"


class NodeMetrics:
    """The children of every per-node metric for one node, resolved once."""

    def __init__(self, node_id: str) -> None:
        n = self.node_id = node_id
        self._apps: dict[str, AppMetrics] = {}
        self.auth_failures = AUTH_FAILURES.labels(n)
        self.frames = {kind: FRAMES.labels(n, kind) for kind in FRAME_TYPES}
        self.published = PUBLISHED.labels(n)
        self.publish_errors = BROKER_ERRORS.labels(n, "publish")
        self.consume_errors = BROKER_ERRORS.labels(n, "consume")
        self.publish_latency = PUBLISH_LATENCY.labels(n)
        self.consumed = {kind: CONSUMED.labels(n, kind) for kind in MESSAGE_KINDS}
        self.forwarded = FORWARDED.labels(n)
        self.skipped = {reason: SKIPPED.labels(n, reason) for reason in SKIP_REASONS}
        self.app(_DEFAULT_APP)
        self.channel_layer_lag = CHANNEL_LAYER_LAG.labels(n)
        self.session_failures = {
            where: SESSION_FAILURES.labels(n, where) for where in ("write", "handler")
        }
        self._disconnects: dict[tuple[str, int], Any] = {}

    def app(self, app: str) -> AppMetrics:
        """The per-app children for ``app`` (a dict lookup once made)."""
        children = self._apps.get(app)
        if children is None:
            children = self._apps[app] = AppMetrics(self.node_id, app)
        return children

    def disconnect(self, code: int, app: str = _DEFAULT_APP) -> None:
        child = self._disconnects.get((app, code))
        if child is None:
            child = DISCONNECTS.labels(self.node_id, app, close_code_label(code))
            if len(self._disconnects) < 4096:
                self._disconnects[(app, code)] = child
        child.inc()

    def frame(self, kind: str) -> None:
        child = self.frames.get(kind)
        (child if child is not None else FRAMES.labels(self.node_id, kind)).inc()

    def push(self, client: str, status: str, amount: int = 1,
             app: str = _DEFAULT_APP) -> None:
        """API outcomes (per request, not a hot path); ``amount`` 0 still creates the series."""
        PUSHES.labels(self.node_id, app, client, status).inc(amount)


@functools.cache
def bound(node_id: str) -> NodeMetrics:
    """This node's metric children (created once, at 0, so every series exists from start)."""
    return NodeMetrics(node_id)


# --- Gauges read from live state --------------------------------------------------------
_samplers: dict[str, Callable[[], None]] = {}


def bind_gauges(node_id: str, *, by_app: Callable[[], dict[str, tuple[int, int]]],
                backlog: Callable[[], float],
                oldest_age_s: Callable[[], float] = lambda: 0.0) -> None:
    """Gauges set from the node's live state before every scrape and every half second
    (``watch_event_loop``); a later call for the same node replaces the earlier one.

    ``by_app`` gives ``app: (connections, users)`` for the apps with a session here; an
    app seen before and gone since reads 0, not its last value.
    """
    children = (
        (RELAY_BACKLOG.labels(node_id), backlog),
        (RELAY_OLDEST.labels(node_id), oldest_age_s),
    )
    seen: set[str] = {_DEFAULT_APP}

    def sample() -> None:
        for gauge, read in children:
            gauge.set(read())
        counts = by_app()
        seen.update(counts)
        for app in seen:
            connections, users = counts.get(app, (0, 0))
            CONNECTIONS.labels(node_id, app).set(connections)
            USERS.labels(node_id, app).set(users)

    _samplers[node_id] = sample
    sample()


def unbind_gauges(node_id: str) -> None:
    _samplers.pop(node_id, None)


def set_process(node_id: str, *, role: str, connections_ceiling: int | None = None) -> None:
    """Count this process under its role; record the node's connection ceiling."""
    PROCESSES.labels(node_id, role).set(1)
    if connections_ceiling is not None:
        CONNECTIONS_CEILING.labels(node_id).set(connections_ceiling)


def refresh() -> None:
    for sample in list(_samplers.values()):
        try:
            sample()
        except Exception:  # a sampler must never break a scrape
            logger.exception("a metrics sampler failed")


async def watch_event_loop(
    node_id: str, role: str, *, interval_s: float = 0.5,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> None:
    """Measure event-loop lag (how much later than asked a sleep returns) until cancelled,
    and refresh this process's gauges on each round."""
    lag = EVENT_LOOP_LAG.labels(node_id, role)
    while True:
        started = clock()
        await sleep(interval_s)
        lag.observe(max(0.0, clock() - started - interval_s))
        refresh()


# --- Exposition ------------------------------------------------------------------------
_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_processes(path: str) -> None:
    """Drop the live gauges of processes that died without saying so (SIGKILL, OOM), so a
    dead process's connections do not linger. Assumes, as multi-process mode does, that a
    node's processes share one PID namespace."""
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_FILE.search(os.path.basename(name))
        if match is not None and not _pid_alive(int(match.group(1))):
            mark_process_dead(int(match.group(1)), path)


def render() -> bytes:
    """The node's metrics in Prometheus text format."""
    refresh()
    if not MULTIPROC_DIR:
        return generate_latest(REGISTRY)
    forget_dead_processes(MULTIPROC_DIR)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, MULTIPROC_DIR)
    return generate_latest(registry)


def serve(port: int, host: str = "0.0.0.0") -> Any:
    """``/metrics`` of this process on its own port (``runconsumer --metrics-port``)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = render()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    Thread(target=server.serve_forever, name="gateway-metrics", daemon=True).start()
    return server


def _forget_this_process() -> None:
    with contextlib.suppress(OSError):
        mark_process_dead(os.getpid(), MULTIPROC_DIR)


if MULTIPROC_DIR:
    # A process that exits normally takes its live gauges with it.
    atexit.register(_forget_this_process)
