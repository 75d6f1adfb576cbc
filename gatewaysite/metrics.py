"""Prometheus metrics of one node process.

Every metric carries a ``node`` label so that a cluster's metrics stay apart even when
scraped through one address. Labels are bounded: never a user id, session id or push id.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)
_N = ["node"]

CONNECTIONS = Gauge(
    "gateway_connections", "Open WebSocket connections.", _N, registry=REGISTRY
)
USERS = Gauge(
    "gateway_users", "Users with at least one open connection.", _N, registry=REGISTRY
)
CONNECTS = Counter(
    "gateway_connects_total", "Accepted, authenticated connections.", _N, registry=REGISTRY
)
DISCONNECTS = Counter(
    "gateway_disconnects_total", "Closed connections by close code.", [*_N, "code"],
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "gateway_auth_failures_total", "Handshakes closed with 4001.", _N, registry=REGISTRY
)
HEARTBEAT_TIMEOUTS = Counter(
    "gateway_heartbeat_timeouts_total", "Connections closed by the heartbeat sweep (4008).", _N,
    registry=REGISTRY,
)
FRAMES = Counter(
    "gateway_frames_received_total", "Client frames by type.", [*_N, "type"], registry=REGISTRY
)
PUSHES = Counter(
    "gateway_pushes_total", "Pushes through the API by outcome.", [*_N, "outcome"],
    registry=REGISTRY,
)
PUBLISHED = Counter(
    "gateway_broker_published_total", "Messages the broker accepted.", _N, registry=REGISTRY
)
BROKER_ERRORS = Counter(
    "gateway_broker_errors_total", "Broker failures by operation.", [*_N, "op"], registry=REGISTRY
)
PUBLISH_LATENCY = Histogram(
    "gateway_broker_publish_seconds", "Time for the broker to accept one message.", _N,
    registry=REGISTRY, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CONSUMED = Counter(
    "gateway_messages_consumed_total", "Broker messages this node consumed.", [*_N, "kind"],
    registry=REGISTRY,
)
SKIPPED = Counter(
    "gateway_messages_skipped_total",
    "Consumed messages not delivered: stale, duplicate, expired, malformed.",
    [*_N, "reason"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "gateway_deliveries_total", "Push frames written to connections.", _N, registry=REGISTRY
)
PUSH_LATENCY = Histogram(
    "gateway_push_latency_seconds",
    "From acceptance by the API to the frame handed to the socket, per push and node.",
    _N,
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RELAY_BACKLOG = Gauge(
    "gateway_relay_backlog", "Pushes accepted by this process and not yet published.", _N,
    registry=REGISTRY,
)


def bind_gauges(node_id: str, *, connections: Callable[[], float], users: Callable[[], float],
                backlog: Callable[[], float]) -> None:
    """Gauges read from the live registry at scrape time, so they are never stale."""
    CONNECTIONS.labels(node_id).set_function(connections)
    USERS.labels(node_id).set_function(users)
    RELAY_BACKLOG.labels(node_id).set_function(backlog)


def render() -> bytes:
    return generate_latest(REGISTRY)
