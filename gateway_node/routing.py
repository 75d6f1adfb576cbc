"""Routed delivery on one node: the presence map, the relay's router, the cluster-wide cap.

Wired by ``GatewayNode`` when ``REDIS_URL`` is set (whatever ``GATEWAY_ROUTING`` says: a node
in ``broadcast`` mode still fills the map and reads its own destination, so that routed
publishers may reach it during a rolling upgrade, docs/cluster.md):

- ``opened`` (the hub's ``on_open``) adds a connecting session to the map before the hub
  returns, so before the session's replay reads its inbox ("the race", docs/cluster.md);
  then applies ``GATEWAY_MAX_CONNECTIONS_PER_USER_CLUSTER``: the user's oldest connections
  past it are closed with 4009, here or through an order routed to the node holding them.
- ``closed`` (the hub's ``on_close``) queues the session's removal.
- ``run`` beats the map every second and reads which nodes the database says are alive
  (the router broadcasts while one of them has no marker).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from gateway_core import routing_metrics
from gateway_core.conf import gateway_settings
from gateway_core.messages import ControlMessage, Message
from gateway_core.presence_map import LocalSession, PresenceMap, PresenceUnavailable, routing_mode
from push_app.routing import PresenceRouter
from sessions_app.close_codes import CloseCode
from sessions_app.hub import Hub
from sessions_app.registry import ChannelSession, SessionManager
from sessions_app.selectors import live_node_ids

logger = logging.getLogger("gateway.routing")

Db = Callable[..., Awaitable[Any]]


class NodeRouting:
    clock: Callable[[], float] = staticmethod(time.time)
    #: How often the live nodes are read from the database.
    live_every_s = 1.0

    def __init__(self, *, node_id: str, registry: SessionManager, hub: Hub, db: Db,
                 submit: Callable[[Message], None], started_at: float,
                 presence: PresenceMap | None = None) -> None:
        self.node_id = node_id
        self.registry = registry
        self.hub = hub
        self.db = db
        self.submit = submit
        self.presence = presence or PresenceMap(
            url=gateway_settings.redis_url, node_id=node_id,
            incarnation=f"{int(started_at * 1000)}-{uuid.uuid4().hex[:6]}",
            node_timeout_s=gateway_settings.node_timeout_s,
            topic=gateway_settings.rocketmq_topic,
        )
        self.live: set[str] = {node_id}
        self.router = PresenceRouter(presence=self.presence, node_id=node_id,
                                     mode=routing_mode, live_nodes=lambda: self.live)
        self.metrics = routing_metrics.bound(node_id)
        self._add_failing = False
        hub.on_open = self.opened
        hub.on_close = self.closed

    def sessions(self) -> Iterator[LocalSession]:
        for s in self.registry.all_sessions():
            yield LocalSession(app=s.app_id, user=s.user_id, session_id=s.session_id,
                               connected_at=s.connected_at)

    async def opened(self, session: ChannelSession) -> None:
        try:
            await self.presence.add(app=session.app_id, user=session.user_id,
                                    session_id=session.session_id,
                                    connected_at=session.connected_at)
            self._add_failing = False
        except PresenceUnavailable as exc:
            # Re-added at the next beat that reaches Redis. Until then no publisher may
            # trust the map for this node's users: before the session's inbox is read, the
            # marker says so and publishers broadcast (docs/cluster.md, "Faults"); those
            # that cannot reach Redis at all broadcast anyway.
            if not self._add_failing:
                logger.warning("session not added to the presence map: %s", exc,
                               extra={"session_id": session.session_id})
            self._add_failing = True
            try:
                await self.presence.mark_incomplete()
            except PresenceUnavailable as marking:
                logger.warning("presence marker not marked incomplete: %s", marking)
            return
        cap = gateway_settings.max_connections_per_user_cluster
        if cap:
            try:
                await self.enforce_cap(session, cap)
            except PresenceUnavailable as exc:
                logger.warning("cluster-wide cap not applied: %s", exc,
                               extra={"session_id": session.session_id})

    def closed(self, session: ChannelSession) -> None:
        self.presence.remove(app=session.app_id, user=session.user_id,
                             session_id=session.session_id)

    async def enforce_cap(self, session: ChannelSession, cap: int) -> int:
        """Close the user's oldest connections in the cluster past ``cap`` with 4009;
        how many."""
        connections = await self.presence.connections(session.app_id, session.user_id)
        excess = [c for c in connections if c.session_id != session.session_id]
        excess = excess[:max(0, len(connections) - cap)]
        for old in excess:
            local = self.registry.get(old.session_id) if old.node == self.node_id else None
            if local is not None:
                await self.hub.close(local, CloseCode.REPLACED)
            else:
                # Another node, or another web process of this one (a split node): the
                # order goes to that node's destination, and the process holding it acts.
                self.submit(ControlMessage(
                    id=uuid.uuid4().hex, action="replace", users=(),
                    session_ids=(old.session_id,),
                    reason="GATEWAY_MAX_CONNECTIONS_PER_USER_CLUSTER",
                    issued_ms=int(self.clock() * 1000), app=session.app_id, node=old.node))
            await self.presence.forget(old, app=session.app_id, user=session.user_id)
        return len(excess)

    def figures(self) -> dict[str, Any]:
        """What the node's row shows of routing (``Node.routing``, the console)."""
        try:
            mode = routing_mode()
        except Exception:
            mode = "?"
        return self.metrics.figures(mode)

    async def start(self) -> None:
        """The node's first beat: its marker exists before it takes a connection."""
        self.metrics.mode(routing_mode())
        try:
            await self.refresh_live()
            await self.presence.beat(self.sessions)
        except Exception as exc:
            logger.warning("presence map not reached at start (%s): routing broadcasts "
                           "until it is", exc)

    async def refresh_live(self) -> None:
        live = await self.db(live_node_ids, gateway_settings.node_timeout_s)
        self.live = {*live, self.node_id}

    async def run(self) -> None:
        """Beat the map (``PresenceMap.run``) and read the live nodes, until cancelled."""
        beat = asyncio.create_task(self.presence.run(self.sessions), name="presence-beat")
        try:
            while True:
                try:
                    await self.refresh_live()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.warning("reading the live nodes failed", exc_info=True)
                await asyncio.sleep(self.live_every_s)
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)

    async def stop(self) -> None:
        try:
            await self.presence.leave()
        except Exception as exc:
            logger.warning("presence marker not removed at stop: %s", exc)
        await self.presence.close()
