"""The node: one process's composition root, and its background loops.

A node owns the session registry and hub, the broker, the relay, the delivery side and the
accounting, and runs their loops on the server's event loop. Roles:

- ``all`` (``rungateway``, or a web server without ``REDIS_URL``): consumes the broker
  itself and delivers in-process, the fastest path.
- ``web`` (a web server with ``REDIS_URL``): a separate ``runconsumer`` feeds it through the
  node's channel layer.

Database work runs on one dedicated thread so it never blocks the event loop, and never
queues behind the sync views' thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol, TypeVar

from channels.layers import get_channel_layer
from django.db import close_old_connections, connections

from gateway_core import bridge, metrics
from gateway_core.batching import Batcher
from gateway_core.brokers import BaseBroker, create_broker
from gateway_core.conf import gateway_settings
from gateway_core.messages import Message
from gateway_core.presence_map import routing_mode
from gateway_core.ratelimit import RateLimits
from gateway_core.tenancy import DEFAULT_APP, AppDirectory, AppInfo, AppLimits
from gateway_node.routing import NodeRouting
from gateway_node.supervisor import LoopFactory, Supervised
from push_app.ledger import DeliveryLedger
from push_app.recipients import InboxAsk, RecipientLedger, Recovery, inboxes, settle
from push_app.rejections import RejectionCounter
from push_app.relay import Relay
from push_app.tenancy import app_infos
from push_app.writer import PushWriter
from sessions_app.delivery import ChannelLayerListener, Deliverer
from sessions_app.hub import Hub
from sessions_app.recorder import SessionRecorder, dead_node_ids
from sessions_app.registry import ChannelSession, SessionManager
from sessions_app.selectors import app_loads, user_presence
from webhooks.presence import PresenceWatcher
from webhooks.sender import WebhookSender
from webhooks.settled import SettleWatcher

logger = logging.getLogger("gateway.node")
T = TypeVar("T")
C = TypeVar("C")
Role = Literal["all", "web"]


#: A push id as ``push_app.services.new_push_id`` makes them (``since`` must be one).
_PUSH_ID = re.compile(r"[0-9a-f]{32}")
#: Connecting sessions whose inboxes one database job reads at most: 0.1-0.3 ms each, so a
#: job of them holds up the pushes' commits, which share the thread, a few ms at most.
INBOX_READS_PER_JOB = 20
#: How long the node's loops get to end once cancelled before their broker is closed
#: under them.
STOP_WAIT_S = 2.0


class _Counts(Protocol[C]):
    """In-memory counts the node writes once a second (the delivery ledger, refused API
    requests): ``take`` what changed, ``write`` it in a database thread a part at a time,
    ``untake`` what the write did not store."""

    def take(self) -> C: ...

    def parts(self, taken: C) -> list[C]: ...

    def write(self, taken: C) -> None: ...

    def untake(self, taken: C) -> None: ...


class GatewayNode:
    #: How often the heartbeat sweep and delivery accounting run.
    tick_s = 1.0

    def __init__(self, *, role: Role | None = None, broker: BaseBroker | None = None,
                 address: str = "") -> None:
        self.node_id = gateway_settings.node_id
        self.role: Role = role or ("web" if gateway_settings.redis_url else "all")
        self.started_at = time.time()
        self.autostart = True
        self.registry = SessionManager()
        #: The apps this node knows (reloaded at each beat; the default app from the start,
        #: so a v1 node needs no query to take its first connection).
        self.apps = AppDirectory(
            [AppInfo(id=DEFAULT_APP, secrets=(gateway_settings.jwt_secret,))])
        self.app_limits = AppLimits(self.apps)
        self.recorder = SessionRecorder(
            node_id=self.node_id, address=address, broker=gateway_settings.broker,
            started_at=self.started_at, node_timeout_s=gateway_settings.node_timeout_s,
        )
        self.hub = Hub(node_id=self.node_id, registry=self.registry, recorder=self.recorder)
        self.broker = broker or create_broker(node_id=self.node_id)
        self.ledger = DeliveryLedger(node_id=self.node_id)
        #: Per-recipient deliveries and acks (PROTOCOL.md section 6).
        self.recipients = RecipientLedger()
        #: Connecting sessions' inbox reads, one database job for those arriving together.
        self.inbox_reads: Batcher[InboxAsk, Recovery] = Batcher(
            self._read_inboxes, max_items=INBOX_READS_PER_JOB, name="inbox-reads")
        self.deliverer = Deliverer(
            node_id=self.node_id, registry=self.registry, on_delivered=self.ledger.delivered,
            close_session=self.hub.close, drop_session=self.hub.drop,
            started_ms=int(self.started_at * 1000), on_recipients=self.recipients.delivered,
        )
        #: Routed delivery (presence map, router, cluster-wide cap): with ``REDIS_URL``.
        self.routing: NodeRouting | None = None
        routing_mode()  # a bad GATEWAY_ROUTING (or routed without REDIS_URL) stops the node
        if gateway_settings.redis_url:
            self.routing = NodeRouting(
                node_id=self.node_id, registry=self.registry, hub=self.hub, db=self.db,
                submit=self.submit, started_at=self.started_at)
        self.relay = Relay(
            broker=self.broker, db=self.db, node_id=self.node_id,
            dead_nodes=functools.partial(
                dead_node_ids, timeout_s=gateway_settings.node_timeout_s, exclude=self.node_id
            ),
            router=None if self.routing is None else self.routing.router,
        )
        #: The API's request budgets: the hot path's and (through the bridge) DRF's.
        self.rate_limits = RateLimits()
        #: Requests the API refused, per client: the hot path's and (through the bridge) DRF's.
        self.rejections = RejectionCounter(node_id=self.node_id)
        self._db_executor = ThreadPoolExecutor(1, thread_name_prefix="gateway-db")
        # Webhooks have a database thread of their own: the outbox's claims and writes never
        # queue ahead of a push's (PROTOCOL.md section 7: no endpoint delays any push). Not
        # on SQLite, which has one writer at a time: two threads writing would take turns by
        # sleeping in SQLite's busy handler (milliseconds a turn), slower for both than
        # taking turns on one thread.
        self._webhook_executor = (
            self._db_executor if connections["default"].vendor == "sqlite"
            else ThreadPoolExecutor(1, thread_name_prefix="gateway-webhooks"))
        self.webhooks = WebhookSender(node_id=self.node_id, db=self.webhook_db)
        self.presence_events = PresenceWatcher(db=self.webhook_db,
                                               on_emitted=self.webhooks.wake)
        self.settled_events = SettleWatcher(db=self.webhook_db, on_emitted=self.webhooks.wake)
        # The API's pushes, stored by group commit on the database thread, then relayed.
        self.writer = PushWriter(db=self.db, submit=self.relay.submit, node_id=self.node_id)
        self._tasks: list[asyncio.Task[Any]] = []
        self.loops: dict[str, Supervised] = {}
        self._start_lock = asyncio.Lock()
        self.running = False
        self.loop: asyncio.AbstractEventLoop | None = None
        metrics.bind_gauges(
            self.node_id,
            by_app=self.registry.counts_by_app,
            backlog=lambda: self.relay.backlog,
            oldest_age_s=self.relay.oldest_age_s,
        )

    def install_bridge(self) -> None:
        """Make this node the one sync code reaches through ``gateway_core.bridge``."""
        bridge.install(submit=self.submit_threadsafe, backlog=lambda: self.relay.backlog,
                       user_presence=self.user_presence, rate_limits=self.rate_limits,
                       rejected=self.rejections.count, app_limits=self.app_limits)

    def submit(self, message: Message) -> None:
        """Hand a message to the relay, on the event loop (looked up per call)."""
        self.relay.submit(message)

    def submit_threadsafe(self, message: Message) -> None:
        """Hand a message to the relay from another thread (looked up per call: tests
        replace the relay's method)."""
        self.relay.submit_threadsafe(message)

    def acked(self, push_id: str, session: ChannelSession) -> None:
        """A session acknowledged a push delivered here: counted in the ledger, and for
        its user (one ack settles the push for the user on every node)."""
        self.ledger.acked(push_id)
        self.recipients.acked(push_id, session.user_id)

    async def recover(self, session: ChannelSession, since: str | None) -> Recovery:
        """A connecting session's replay (PROTOCOL.md section 6), read on the database
        thread. If the database fails, the session starts with none (``complete`` false
        with ``since``) rather than not at all: its kept pushes wait for the next
        connection."""
        valid = since if since is not None and _PUSH_ID.fullmatch(since) else None
        try:
            recovery = await self.inbox_reads.call((session.app_id, session.user_id, valid))
        except Exception:
            logger.warning("reading the inbox of %s failed; no replay", session.user_id,
                           exc_info=True, extra={"session_id": session.session_id})
            return Recovery(pushes=[], complete=None if since is None else False)
        pushes = [p for p in recovery.pushes
                  if not (p.targeted and self.recipients.recently_acked(p.id, session.user_id))]
        complete = recovery.complete if valid == since else False
        return Recovery(pushes=pushes, complete=complete)

    async def _read_inboxes(self, asks: Sequence[InboxAsk]) -> list[Recovery | Exception]:
        return await self.db(functools.partial(
            inboxes, list(asks), limit=gateway_settings.max_pending_per_user))

    def replayed(self, session: ChannelSession, push_ids: list[str]) -> None:
        """Targeted pushes a replay wrote to ``session``: deliveries like live ones."""
        for push_id in push_ids:
            self.ledger.delivered(push_id, 1)
            self.recipients.delivered(push_id, {session.user_id: 1})

    def user_presence(self, user_id: str, app: str = DEFAULT_APP) -> dict[str, Any]:
        return user_presence(user_id=user_id, node_id=self.node_id, registry=self.registry,
                             node_timeout_s=gateway_settings.node_timeout_s, app=app)

    def app_secrets(self, app: str) -> tuple[str, ...] | None:
        """The secrets that verify tokens of ``app``, or None for an app not known here."""
        info = self.apps.get(app)
        return None if info is None else info.secrets

    def app_connection_allowed(self, app: str) -> bool:
        """Whether ``app`` is under its ``max_connections`` across the cluster."""
        return self.app_limits.connection_allowed(app, self.registry.connections_of(app))

    async def reload_apps(self, *, on_miss: bool = False) -> None:
        """Reload the apps (secrets, limits) and the other nodes' per-app load. On a token
        naming an unknown app (``on_miss``), at most once a second."""
        if on_miss and not self.apps.may_reload_on_miss():
            return
        infos, loads = await self.db(_apps_and_loads, self.node_id)
        self.apps.replace(infos)
        self.app_limits.others = loads

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the node's database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_executor, _with_fresh_connection, fn, args)

    #: On a database thread shared with the push writer (SQLite), how long the webhooks'
    #: database work at most gives way to pushes waiting to be stored.
    webhook_yield_s = 0.05

    async def webhook_db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the webhooks' database thread. Where that is the node's own (SQLite),
        pushes waiting for their group commit go first: a push is answered 202 only once
        stored, and webhook calls are never that urgent."""
        loop = asyncio.get_running_loop()
        if self._webhook_executor is self._db_executor:
            deadline = loop.time() + self.webhook_yield_s
            while self.writer.queued and loop.time() < deadline:  # noqa: ASYNC110 (a count, no event)
                await asyncio.sleep(0.002)
        return await loop.run_in_executor(
            self._webhook_executor, _with_fresh_connection,
            functools.partial(fn, **kwargs), args)

    async def ensure_started(self) -> None:
        if self.running or not self.autostart:
            return
        async with self._start_lock:
            if not self.running:
                await self.start()

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.writer.reopen()
        await self.db(self.recorder.start)
        await self.reload_apps()
        await self.broker.start()
        if self.routing is not None:
            await self.routing.start()
            self._spawn("presence", self.routing.run)
        self._spawn("relay", self.relay.run)
        self._spawn("housekeeping", self._housekeeping)
        self._spawn("webhooks", self.webhooks.run)
        self._spawn("presence-events", self.presence_events.run)
        self._spawn("settled-events", self.settled_events.run)
        metrics.set_process(self.node_id, role=self.role,
                            connections_ceiling=gateway_settings.connections_ceiling)
        self._spawn("loop-lag", functools.partial(
            metrics.watch_event_loop, self.node_id, self.role))
        if self.role == "all":
            self._spawn(self.delivery_loop, functools.partial(
                self.broker.consume, self.deliverer.handle_raw))
        else:
            listener = ChannelLayerListener(get_channel_layer(), self.deliverer)
            self._spawn(self.delivery_loop, listener.run)
        self.running = True
        logger.info(
            "node %s started (role %s, broker %s)", self.node_id, self.role, self.broker.name
        )

    @property
    def delivery_loop(self) -> str:
        """The loop that feeds this node's sessions: without it nothing is delivered."""
        return "consume" if self.role == "all" else "channel-layer"

    def health(self) -> tuple[bool, str]:
        """``/healthz``: the process serves, and its delivery loop runs (not between a
        failure and its restart); False with the reason otherwise."""
        if not self.running:
            return False, "the node is not running"
        loop = self.loops.get(self.delivery_loop)
        if loop is None or not loop.running:
            return False, f"the {self.delivery_loop} loop is down, waiting to restart"
        return True, "ok"

    def _spawn(self, name: str, factory: LoopFactory) -> None:
        loop = self.loops[name] = Supervised(name, factory, node_id=self.node_id)
        task = asyncio.create_task(loop.run(), name=f"gateway-{name}")
        task.add_done_callback(_log_crash)
        self._tasks.append(task)

    async def _housekeeping(self) -> None:
        last_record = 0.0
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.hub.sweep(timeout_s=gateway_settings.heartbeat_timeout_s)
                await self.write_ledger()
                await self.write_rejections()
                now = time.time()
                if now - last_record >= gateway_settings.record_interval_s:
                    last_record = now
                    await self.record(now=now)
                    await self.reload_apps()
                    await self.db(functools.partial(
                        settle, max_pending=gateway_settings.max_pending_per_user))
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("housekeeping round failed; next one in %.0f s", self.tick_s)

    async def write_ledger(self) -> None:
        await self._write_taken(self.ledger)
        await self._write_taken(self.recipients)

    async def write_rejections(self) -> None:
        await self._write_taken(self.rejections)

    async def _write_taken(self, counts: _Counts[Any]) -> None:
        """Write what ``counts`` gathered in memory since the last write, on the database
        thread; nothing to write, no database round trip.

        One database job (and transaction) per part: the pushes' own commits share the
        database thread, and a second's deliveries at 1,500 pushes/s written in one job
        held them 25 ms, the slowest pushes of a steady load (docs/performance.md).
        """
        taken = counts.take()
        if not taken:
            return
        parts = counts.parts(taken)
        for done, part in enumerate(parts):
            try:
                await self.db(counts.write, part)
            except BaseException:
                # Not written (database error, or cancelled by ``stop``): the next write
                # has it.
                for unwritten in parts[done:]:
                    counts.untake(unwritten)
                raise

    async def record(self, *, now: float, stopping: bool = False) -> None:
        snapshot = self.recorder.snapshot(self.registry, now=now, stopping=stopping,
                                          push_rates=self.app_limits.beat())
        if self.routing is not None:
            snapshot.routing = self.routing.figures()
        await self.db(self.recorder.write, snapshot)

    async def stop(self) -> None:
        """Drain (4012 to every client), stop consuming, write what is pending."""
        if not self.running:
            return
        self.running = False
        # A connection or request arriving while the node drains must not start it again
        # (``ensure_started``): under a reconnect storm it did, again and again, and the
        # process never exited. ``start()`` itself still may.
        self.autostart = False
        drained = await self.hub.drain()
        # Pushes already queued for the push log are committed (and reach the relay's
        # queue) before the relay stops: answered 202, they are kept.
        await self.writer.close()
        for task in self._tasks:
            task.cancel()
        _, stuck = await asyncio.wait(self._tasks, timeout=STOP_WAIT_S)
        if stuck:
            # redis-py can hold a cancelled XREAD until its connection is closed.
            await self.broker.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.loops.clear()
        try:
            await self.relay.flush()
            await self.write_ledger()
            await self.write_rejections()
            await self.record(now=time.time(), stopping=True)
        except Exception:
            logger.exception("final database write failed")
        await self.broker.close()
        if self.routing is not None:
            await self.routing.stop()
        logger.info("node %s stopped; drained %d connection(s)", self.node_id, drained)


def _apps_and_loads(node_id: str) -> tuple[list[AppInfo], dict[str, Any]]:
    """On the database thread: every app, and the other live nodes' per-app load."""
    return app_infos(), app_loads(exclude=node_id, timeout_s=gateway_settings.node_timeout_s)


def _with_fresh_connection(fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    # A long-lived thread keeps its connection; drop it if the database closed it.
    # CONN_MAX_AGE 0 (the SQLite default, for request threads that die after one request)
    # would reopen it for every call: opening costs more than most of the work done here.
    for conn in connections.all(initialized_only=True):
        if conn.settings_dict["CONN_MAX_AGE"] == 0:
            conn.close_at = None
    close_old_connections()
    return fn(*args)


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s stopped", task.get_name(), exc_info=task.exception())


_node: GatewayNode | None = None
_node_lock = threading.Lock()


def get_node() -> GatewayNode:
    """This process's node, created on first use."""
    global _node
    if _node is None:
        with _node_lock:
            if _node is None:
                _node = GatewayNode()
                _node.install_bridge()
    return _node


def set_node(node: GatewayNode | None) -> None:
    """Install a node (``rungateway`` with its role, or a test's); None forgets it."""
    global _node
    _node = node
    if node is None:
        bridge.uninstall()
    else:
        node.install_bridge()
