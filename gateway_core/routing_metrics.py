"""Prometheus metrics of routed delivery (docs/monitoring.md, "Routing").

In the gateway's one registry (``gateway_core.metrics.REGISTRY``), in a module of their own
so that routing stays one concept. What a node read and did not hold is
``gateway_messages_skipped_total{reason="no_local_session"}``, counted by the delivery side.
"""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

from gateway_core import metrics
from gateway_core.metrics import REGISTRY

_N = ["node"]

ROUTED = Counter(
    "gateway_pushes_routed_total",
    "Targeted pushes this node's relay published to one holding node's own destination "
    "(RocketMQ tag, Redis stream), by destination node.",
    [*_N, "to"], registry=REGISTRY,
)
ROUTING_OUTCOMES = Counter(
    "gateway_routing_total",
    "Messages this node's relay routed, per publish attempt, by how: routed (to the nodes "
    "holding their users), unheld (targeted, no user connected anywhere: not published), "
    "broadcast (broadcasts, orders, and routing mode broadcast), fallback (broadcast "
    "because the presence map could not be trusted: Redis down, or a live node without a "
    "marker).",
    [*_N, "how"], registry=REGISTRY,
)
MAP_SIZE = Gauge(
    "gateway_presence_map_connections",
    "Connections in the cluster's presence map, as this node last read it.", _N,
    registry=REGISTRY, multiprocess_mode="livemax",
)
LOOKUP_SECONDS = Histogram(
    "gateway_presence_lookup_seconds",
    "Time for one presence map lookup (a round of the relay, any number of users).", _N,
    registry=REGISTRY, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
ROUTING_MODE = Gauge(
    "gateway_routing_mode",
    "1 for this node's routing mode (GATEWAY_ROUTING): broadcast or routed.",
    [*_N, "mode"], registry=REGISTRY, multiprocess_mode="livemax",
)
HOW = ("routed", "unheld", "broadcast", "fallback")


class RoutingMetrics:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.size = MAP_SIZE.labels(node_id)
        self.lookup_seconds = LOOKUP_SECONDS.labels(node_id)
        self.outcomes = {how: ROUTING_OUTCOMES.labels(node_id, how) for how in HOW}
        self._routed: dict[str, Counter] = {}

    def routed(self, to: str, amount: int = 1) -> None:
        child = self._routed.get(to)
        if child is None:
            child = self._routed[to] = ROUTED.labels(self.node_id, to)
        child.inc(amount)

    def figures(self, mode: str) -> dict[str, object]:
        """This process's routing figures since it started, for the node's row
        (``Node.routing``, shown by the console)."""
        node = metrics.bound(self.node_id)
        lookups = _samples(LOOKUP_SECONDS, self.node_id)
        count, total = lookups.get("_count", 0.0), lookups.get("_sum", 0.0)
        return {
            "mode": mode,
            "read": int(_value(node.consumed["push"])),
            "not_held": int(_value(node.skipped["no_local_session"])),
            "routed": {to: int(_value(child)) for to, child in sorted(self._routed.items())},
            **{how: int(_value(child)) for how, child in self.outcomes.items()},
            "map_connections": int(_value(self.size)),
            "lookups": int(count),
            "lookup_ms": round(total / count * 1000, 3) if count else None,
        }

    def mode(self, mode: str) -> None:
        for name in ("broadcast", "routed"):
            ROUTING_MODE.labels(self.node_id, name).set(1 if name == mode else 0)


def _value(child: object) -> float:
    return float(child._value.get())  # type: ignore[attr-defined]


def _samples(histogram: Histogram, node_id: str) -> dict[str, float]:
    """``_count`` and ``_sum`` of one node's child of ``histogram``."""
    found: dict[str, float] = {}
    for family in histogram.collect():
        for sample in family.samples:
            if sample.labels.get("node") == node_id and sample.name.endswith(("_count", "_sum")):
                found[sample.name[len(family.name):]] = sample.value
    return found


@functools.cache
def bound(node_id: str) -> RoutingMetrics:
    return RoutingMetrics(node_id)
