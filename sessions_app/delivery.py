"""From a broker message to this node's sockets.

``Deliverer`` is the hot path: one decoded message, one frame built and encoded from it, then
that frame written to each target connection one after another in this process (a task or a
channel-layer message per connection is measurably slower). When the web server and the
broker consumer are separate processes, ``ChannelLayerForwarder`` (in ``runconsumer``) sends
each raw message once to the node's channel layer group and ``ChannelLayerListener`` (in
each web process) hands it to that process's ``Deliverer``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from gateway_core import metrics
from gateway_core.conf import gateway_settings
from gateway_core.logs import push_id_var
from gateway_core.messages import (
    BadMessage,
    ControlMessage,
    Message,
    PushMessage,
    decode_many,
    encode,
)
from sessions_app import frames
from sessions_app.close_codes import CloseCode
from sessions_app.registry import ChannelSession, SessionManager

logger = logging.getLogger("gateway.delivery")

#: Channel-layer group that every web process of a node joins.
NODE_GROUP = "gateway.node"
#: Prefix of every process-local channel a web process receives on (``new_channel``).
#: channels_redis multiplexes a process's local channels on one Redis key only when they
#: share the prefix; under another prefix a receive waits for the receive lock, which the
#: listener holds as long as the node gets no message (``/readyz`` then times out).
LOCAL_CHANNEL_PREFIX = "gateway.web."
#: Messages published this long before the node started still count as fresh (clock skew
#: between nodes, and pushes published while this node was starting).
STALE_GRACE_MS = 5_000


def now_ms() -> int:
    return int(time.time() * 1000)


class Deliverer:
    clock_ms: Callable[[], int] = staticmethod(now_ms)
    max_seen = 100_000

    def __init__(
        self,
        *,
        node_id: str,
        registry: SessionManager,
        on_delivered: Callable[[str, int], None],
        close_session: Callable[[ChannelSession, CloseCode], Any],
        drop_session: Callable[[ChannelSession], Any],
        started_ms: int | None = None,
        on_recipients: Callable[[str, dict[str, int]], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.registry = registry
        #: Told how many connections each push reached here (the node counts it).
        self.on_delivered = on_delivered
        #: Told, for a targeted push, how many sockets of each user it was written to
        #: (per-recipient state, PROTOCOL.md section 6).
        self.on_recipients = on_recipients
        self.close_session = close_session
        self.drop_session = drop_session
        self.metrics = metrics.bound(node_id)
        self.started_ms = self.clock_ms() if started_ms is None else started_ms
        self._seen: OrderedDict[str, None] = OrderedDict()

    async def handle_raw(self, raw: bytes | Message) -> None:
        if isinstance(raw, PushMessage | ControlMessage):  # from the local broker
            await self.handle(raw)
            return
        try:
            messages = decode_many(raw)
        except BadMessage as exc:
            self.metrics.skipped["malformed"].inc()
            logger.warning("skipped a malformed broker message (%s): %.200r", exc, raw)
            return
        for message in messages:
            await self.handle(message)

    async def handle(self, message: Message) -> None:
        self.metrics.consumed[message.tag].inc()
        if message.id in self._seen:
            self.metrics.skipped["duplicate"].inc()
            return
        self._seen[message.id] = None
        if len(self._seen) > self.max_seen:
            self._seen.popitem(last=False)
        # Whatever is logged while this message is handled names it.
        token = push_id_var.set(message.id)
        try:
            if isinstance(message, PushMessage):
                await self.deliver_push(message)
            else:
                await self.apply_control(message)
        except Exception:
            # One message that cannot be delivered (a bug, or a poison message from a node
            # that validated less) is logged and skipped: the loop goes on to the next.
            self.metrics.skipped["failed"].inc()
            logger.exception("delivering message %s failed; skipped", message.id)
        finally:
            push_id_var.reset(token)

    async def deliver_push(self, message: PushMessage) -> int:
        now = self.clock_ms()
        published = message.published_ms or message.accepted_ms
        if published < self.started_ms - STALE_GRACE_MS:
            self.metrics.skipped["stale"].inc()
            return 0
        if message.expired(now):
            self.metrics.skipped["expired"].inc()
            return 0
        registry = self.registry
        # Only the push's app: a broadcast reaches its app's users, and ``u1`` of another
        # app is another user (PROTOCOL.md section 9).
        targets = (
            registry.sessions_in(message.app)
            if message.users is None
            else registry.sessions_of(message.users, message.app)
        )
        # Built once, and only on a node that holds a target: in a cluster every node
        # receives every push, and most targeted ones are for users connected elsewhere.
        encoded: tuple[str, bytes] | None = None
        sent = 0
        # Per user, for a targeted push only: broadcasts are not tracked per recipient.
        users: dict[str, int] | None = None if message.users is None else {}
        for session in targets:
            if encoded is None:
                frame = message.frame()
                encoded = (frame, frames.wire(frame))
            # Guarded here, not in a helper coroutine: one more coroutine per delivery is
            # measurable at tens of thousands of deliveries a second.
            try:
                written = await session.connection.send_frame(*encoded)
            except Exception:
                await self.write_failed(session)
                continue
            if written:
                session.received(message.id)
                sent += 1
                if users is not None:
                    users[session.user_id] = users.get(session.user_id, 0) + 1
        if sent:
            self.on_delivered(message.id, sent)
            if users and self.on_recipients is not None:
                self.on_recipients(message.id, users)
            counted = self.metrics.app(message.app)
            counted.deliveries.inc(sent)
            latency_s = max(0, self.clock_ms() - message.accepted_ms) / 1000
            counted.push_latency.observe(latency_s)
        else:
            self.metrics.skipped["no_local_session"].inc()
        return sent

    async def write_failed(self, session: ChannelSession) -> None:
        """A write to one session raised.

        The loop that delivers a push writes to its sessions one after another, so a failure
        on one connection must end there, whatever it is: it cannot stop the delivery of
        this push to the others, nor the loop that delivers every later push. The
        connection broke its contract (``send_frame`` never raises): a bug, logged in full;
        the session is dropped so that no later push meets it again.
        """
        self.metrics.session_failures["write"].inc()
        logger.exception("writing to session %s failed; dropping it", session.session_id,
                         extra={"session_id": session.session_id})
        await self.drop_session(session)

    async def apply_control(self, message: ControlMessage) -> int:
        targets = list(self.registry.sessions_of(message.users, message.app))
        for session_id in message.session_ids:
            session = self.registry.get(session_id)
            # Session ids are unguessable and the console names them; an order of an app
            # still closes only that app's sessions.
            if session is not None and session.app_id == message.app and session not in targets:
                targets.append(session)
        # ``replace``: the cluster-wide per-user cap closing a user's oldest connection.
        code = CloseCode.REPLACED if message.action == "replace" else CloseCode.DISCONNECTED
        for session in targets:
            await self.close_session(session, code)
        if targets:
            logger.info(
                "closed %d connection(s) by order %s: %s", len(targets), message.id, message.reason
            )
        return len(targets)


class ChannelLayerForwarder:
    """In ``runconsumer``: one channel-layer message per broker message, to the node group.

    Each carries ``forwarded_at`` (epoch seconds) so the web side measures the channel
    layer's lag (``gateway_channel_layer_lag_seconds``).
    """

    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, channel_layer: Any, *, node_id: str = "") -> None:
        self.channel_layer = channel_layer
        self.forwarded = metrics.bound(node_id or gateway_settings.node_id).forwarded

    async def __call__(self, raw: bytes | Message) -> None:
        if not isinstance(raw, bytes):
            raw = encode(raw)
        await self.channel_layer.group_send(
            NODE_GROUP, {"type": "gateway.message", "raw": raw, "forwarded_at": self.clock()}
        )
        self.forwarded.inc()


class ChannelLayerListener:
    """In a web process: receives the node group's messages and delivers them here."""

    #: channels_redis forgets group members after a day; rejoin well before that.
    rejoin_every_s = 3600.0

    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, channel_layer: Any, deliverer: Deliverer) -> None:
        self.channel_layer = channel_layer
        self.deliverer = deliverer
        self.lag = deliverer.metrics.channel_layer_lag

    async def run(self) -> None:
        channel = await self.channel_layer.new_channel(LOCAL_CHANNEL_PREFIX)
        await self.channel_layer.group_add(NODE_GROUP, channel)
        loop = asyncio.get_running_loop()
        joined = loop.time()
        try:
            while True:
                try:
                    event = await self.channel_layer.receive(channel)
                    forwarded_at = event.get("forwarded_at")
                    if forwarded_at is not None:
                        self.lag.observe(max(0.0, self.clock() - forwarded_at))
                    await self.deliverer.handle_raw(event["raw"])
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("channel layer receive failed; retrying in 1 s")
                    await asyncio.sleep(1)
                if loop.time() - joined > self.rejoin_every_s:
                    await self.channel_layer.group_add(NODE_GROUP, channel)
                    joined = loop.time()
        finally:
            await self.channel_layer.group_discard(NODE_GROUP, channel)
