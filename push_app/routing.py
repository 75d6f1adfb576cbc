"""Where the relay publishes each message (routed delivery, docs/cluster.md "Routing").

``GATEWAY_ROUTING=broadcast``: every message to every node. ``routed``: a targeted push goes
to the own destination of each node that holds one of its users, found in the presence map
(``gateway_core.presence_map``); a push whose users are connected nowhere is not published
at all (a kept one waits in the database for the next connection); broadcasts and orders
to all nodes go to every node; an order for one node (the cluster-wide cap's 4009) to that
node alone.

The router falls back to broadcasting a whole round whenever the map cannot be trusted:
Redis does not answer, or a node that beats in the database has no marker in the map (a
node of an older release that never writes one, or a map that Redis lost and the node has
not re-filled yet). Broadcasting is always correct, only dearer, so no push is lost to a
map that is wrong for a moment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from gateway_core import routing_metrics
from gateway_core.messages import ControlMessage, Message, PushMessage
from gateway_core.presence_map import PresenceUnavailable

logger = logging.getLogger("gateway.routing")

#: The destination "every node".
BROADCAST: None = None
ROUTED = "routed"
Routes = list[tuple[str | None, list[Message]]]


class Router(Protocol):
    async def route(self, batch: list[Message]) -> Routes:
        """Split ``batch`` by destination (``BROADCAST`` or a node id), keeping each
        destination's messages in batch order; a message may go to several nodes, or
        to none. Never raises."""
        ...


class PresenceLookup(Protocol):
    """What the router reads of the presence map (``PresenceMap.holders``)."""

    async def holders(self, users: Iterable[tuple[str, str]], *, also_nodes: Iterable[str] = ()
                      ) -> tuple[dict[tuple[str, str], set[str]], dict[str, set[str]]]: ...


class PresenceRouter:
    def __init__(self, *, presence: PresenceLookup, node_id: str, mode: Callable[[], str],
                 live_nodes: Callable[[], Iterable[str]]) -> None:
        self.presence = presence
        self.node_id = node_id
        #: The routing mode, read per round (``GATEWAY_ROUTING``).
        self.mode = mode
        #: Nodes the database says are alive (every one must have a marker to route).
        self.live_nodes = live_nodes
        self.metrics = routing_metrics.bound(node_id)
        self._falling_back = ""

    def _broadcast(self, batch: list[Message], how: str) -> Routes:
        self.metrics.outcomes[how].inc(len(batch))
        return [(BROADCAST, batch)]

    async def route(self, batch: list[Message]) -> Routes:
        if self.mode() != ROUTED:
            return self._broadcast(batch, "broadcast")
        targeted = [m for m in batch if isinstance(m, PushMessage) and m.users is not None]
        if not targeted and not any(isinstance(m, ControlMessage) and m.node for m in batch):
            return self._broadcast(batch, "broadcast")
        live = set(self.live_nodes())
        try:
            found, markers = await self.presence.holders(
                ((m.app, user) for m in targeted for user in m.users or ()), also_nodes=live)
        except PresenceUnavailable as exc:
            return self._fall_back(batch, f"presence map unreachable: {exc}")
        unmarked = live - markers.keys()
        if unmarked:
            return self._fall_back(
                batch, f"live node(s) without a presence marker: {', '.join(sorted(unmarked))}")
        if self._falling_back:
            logger.info("routing again (was broadcasting: %s)", self._falling_back)
            self._falling_back = ""
        broadcast: list[Message] = []
        per_node: dict[str, list[Message]] = {}
        for message in batch:
            if isinstance(message, ControlMessage):
                if message.node:
                    per_node.setdefault(message.node, []).append(message)
                else:
                    broadcast.append(message)
                continue
            if message.users is None:
                broadcast.append(message)
                continue
            holders = {node for user in message.users for node in found[(message.app, user)]}
            if not holders:
                self.metrics.outcomes["unheld"].inc()
            else:
                self.metrics.outcomes["routed"].inc()
            for node in sorted(holders):
                per_node.setdefault(node, []).append(message)
        if broadcast:
            self.metrics.outcomes["broadcast"].inc(len(broadcast))
        routes: Routes = [(BROADCAST, broadcast)] if broadcast else []
        for node, messages in per_node.items():
            self.metrics.routed(node, len(messages))
            routes.append((node, messages))
        return routes

    def _fall_back(self, batch: list[Message], why: str) -> Routes:
        if why.split(":")[0] != self._falling_back.split(":")[0]:
            logger.warning("broadcasting instead of routing: %s", why)
        self._falling_back = why
        return self._broadcast(batch, "fallback")
