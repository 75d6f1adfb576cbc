"""The relay: publishes accepted pushes to the broker, and keeps them through outages.

A push is in the database (status ``accepted``) before it reaches the relay. The relay
publishes it and records ``published``; while the broker is down it keeps the push and
retries with back-off; a push whose ``ttl`` runs out first is marked ``failed``. Pushes left
``accepted`` by a process that died (this node's earlier life, or a node that stopped
beating) are found in the database and published by ``recover``, so none is lost; the
delivery side drops the duplicates this can cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from django.db import connection, transaction
from django.utils import timezone

from gateway_core import metrics
from gateway_core.brokers.base import BaseBroker, BrokerUnavailable
from gateway_core.messages import Message, PushMessage, same_version
from push_app.models import PushLog, PushStatus
from push_app.routing import BROADCAST, Router
from push_app.services import push_message

logger = logging.getLogger("gateway.relay")
T = TypeVar("T")
DbRunner = Callable[..., Awaitable[Any]]

TTL_FAILURE = "ttl ran out before the broker accepted the push"


#: Bounds of one broker message of pushes (``Relay._groups``): well under the brokers'
#: message limits (RocketMQ 4 MiB), counting each push's fields besides its data.
MAX_BATCH_BYTES = 1024 * 1024
PUSH_ENVELOPE_BYTES = 512


def _and_more(group: list[Message]) -> str:
    return f" (and {len(group) - 1} more)" if len(group) > 1 else ""


class Relay:
    clock: Callable[[], float] = staticmethod(time.time)
    #: How many publishes may be in flight at once.
    window = 64
    retry_delays_s = (0.2, 0.5, 1.0, 2.0, 5.0)
    #: A push still ``accepted`` this long after creation is presumed orphaned.
    orphan_after_s = 10.0
    recover_every_s = 15.0
    #: Outcomes (published, failed) are written at most this often, each time in one
    #: transaction, not after every round: under load a round is a handful of pushes, and
    #: a transaction per round cost more than the publishing.
    flush_every_s = 0.1

    def __init__(
        self, *, broker: BaseBroker, db: DbRunner, node_id: str,
        dead_nodes: Callable[[], list[str]] | None = None, router: Router | None = None,
    ) -> None:
        self.broker = broker
        #: Where each message goes (routed delivery); None: every message to every node.
        self.router = router
        self.db = db
        self.node_id = node_id
        self.dead_nodes = dead_nodes or (lambda: [])
        self.pending: deque[Message] = deque()
        self._pending_ids: set[str] = set()
        self._published: list[str] = []
        self._failed: list[str] = []
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.broker_up = True
        self.metrics = metrics.bound(node_id)

    @property
    def backlog(self) -> int:
        return len(self.pending)

    def oldest_age_s(self) -> float:
        """How long the oldest waiting push has waited since the API accepted it."""
        for message in self.pending:
            if isinstance(message, PushMessage):
                return max(0.0, self.clock() - message.accepted_ms / 1000)
        return 0.0

    def submit(self, message: Message) -> None:
        """Queue a stored push, or a control order, for publishing (on the event loop)."""
        if message.id in self._pending_ids:
            return
        self._pending_ids.add(message.id)
        self.pending.append(message)
        self._wakeup.set()

    def submit_threadsafe(self, message: Message) -> None:
        """From a sync view's thread; without a running relay the push waits for ``recover``."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.submit, message)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.recover()
        last_recover = self.clock()
        failures = 0
        loop = asyncio.get_running_loop()
        next_flush = loop.time()
        while True:
            timeout = 1.0
            if self._published or self._failed:
                timeout = max(0.0, next_flush - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)
            self._wakeup.clear()
            try:
                while self.pending:
                    if await self.publish_some():
                        failures = 0
                    else:
                        delay = self.retry_delays_s[min(failures, len(self.retry_delays_s) - 1)]
                        failures += 1
                        await self.flush()
                        await asyncio.sleep(delay)
                    if loop.time() >= next_flush:  # a steady stream keeps ``pending`` busy
                        await self.flush()
                        next_flush = loop.time() + self.flush_every_s
                if loop.time() >= next_flush:
                    await self.flush()
                    next_flush = loop.time() + self.flush_every_s
                if self.clock() - last_recover >= self.recover_every_s:
                    last_recover = self.clock()
                    await self.recover()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("relay round failed; retrying")
                await asyncio.sleep(1)

    async def publish_some(self) -> bool:
        """Publish up to ``window`` pending pushes; False if the broker refused any."""
        now = self.clock()
        if not self.broker_up:
            # While the broker refuses, the same first window is retried: expire what ran
            # out of ttl further back too, or it would stay ``accepted`` past its ttl.
            self._expire_pending(int(now * 1000))
        batch: list[Message] = []
        limit = self.window * max(1, self.broker.max_batch_pushes)
        while self.pending and len(batch) < limit:
            message = self.pending.popleft()
            if message.expired(int(now * 1000)):
                self._drop_expired(message)
                continue
            batch.append(message)
        if not batch:
            return True
        routes: list[tuple[str | None, list[Message]]] = [(BROADCAST, batch)]
        if self.router is not None:
            try:
                routes = await self.router.route(batch)
            except Exception:
                # Never lose the batch to a routing bug: every node reads broadcasts.
                logger.exception("routing %d message(s) failed; broadcasting them", len(batch))
        groups = [(node, group) for node, messages in routes for group in self._groups(messages)]
        if self.broker.publish_concurrently:
            outcomes = await asyncio.gather(*(self._publish(g, node) for node, g in groups))
        else:  # a task per message would cost more than the publish itself
            outcomes = [await self._publish(g, node) for node, g in groups]
        # A message routed to several nodes is published once all of them took it; one
        # routed to none (no user connected anywhere) is published as it is.
        refused_ids = {m.id for (_, group), ok in zip(groups, outcomes, strict=True)
                       if not ok for m in group}
        results = [message.id not in refused_ids for message in batch]
        refused = [m for m, ok in zip(batch, results, strict=True) if not ok]
        for message, ok in zip(batch, results, strict=True):
            if ok:
                self._pending_ids.discard(message.id)
                if isinstance(message, PushMessage):
                    self._published.append(message.id)
        # Refused pushes go back to the front, in their order, to be tried again.
        self.pending.extendleft(reversed(refused))
        self.broker_up = not refused
        return not refused

    def _expire_pending(self, now_ms: int) -> None:
        if not any(m.expired(now_ms) for m in self.pending):
            return
        kept: deque[Message] = deque()
        for message in self.pending:
            if message.expired(now_ms):
                self._drop_expired(message)
            else:
                kept.append(message)
        self.pending = kept

    def _drop_expired(self, message: Message) -> None:
        """A push past its ttl becomes ``failed``; a stale control order is dropped."""
        self._pending_ids.discard(message.id)
        if isinstance(message, PushMessage):
            self._failed.append(message.id)
        else:
            logger.warning("dropped control order %s: broker down past its ttl",
                           message.id, extra={"push_id": message.id})

    def _groups(self, batch: list[Message]) -> list[list[Message]]:
        """What goes out as one broker message: runs of pushes up to the broker's
        ``max_batch_pushes`` and ``MAX_BATCH_BYTES``; every control order on its own; the
        app ``default``'s pushes apart from other apps' (``messages.same_version``)."""
        most = self.broker.max_batch_pushes
        if most <= 1:
            return [[message] for message in batch]
        groups: list[list[Message]] = []
        group: list[Message] = []
        size = 0
        for message in batch:
            if not isinstance(message, PushMessage):
                if group:  # kept in submission order
                    groups.append(group)
                    group, size = [], 0
                groups.append([message])
                continue
            push_size = len(message.data_json) + PUSH_ENVELOPE_BYTES
            if group and (len(group) >= most or size + push_size > MAX_BATCH_BYTES
                          or not same_version(group[0], message)):
                groups.append(group)
                group, size = [], 0
            group.append(message)
            size += push_size
        if group:
            groups.append(group)
        return groups

    async def _publish(self, group: list[Message], node: str | None = BROADCAST) -> bool:
        """Publish one group (``_groups``) as one broker message, to every node or to
        ``node`` alone; False if refused."""
        started = time.perf_counter()
        now_ms = int(self.clock() * 1000)
        stamped = [
            dataclasses.replace(m, published_ms=now_ms) if isinstance(m, PushMessage) else m
            for m in group
        ]
        message = group[0]
        try:
            routed: dict[str, str] = {} if node is None else {"node": node}
            if len(stamped) == 1:
                await self.broker.publish(stamped[0], **routed)
            else:
                await self.broker.publish_batch(
                    [m for m in stamped if isinstance(m, PushMessage)], **routed)
        except BrokerUnavailable as exc:
            self.metrics.publish_errors.inc()
            if self.broker_up:
                logger.warning("broker refused push %s%s, keeping it: %s", message.id,
                               _and_more(group), exc, extra={"push_id": message.id})
            return False
        except Exception:
            self.metrics.publish_errors.inc()
            logger.exception("publishing push %s%s failed, keeping it", message.id,
                             _and_more(group), extra={"push_id": message.id})
            return False
        self.metrics.published.inc(len(group))
        self.metrics.publish_latency.observe(time.perf_counter() - started)
        return True

    async def flush(self) -> None:
        published, self._published = self._published, []
        failed, self._failed = self._failed, []
        if published or failed:
            try:
                await self.db(_record_outcomes, published, failed)
            except BaseException:
                # Not written (database error, or cancelled by ``Node.stop`` before the
                # database thread ran it): keep the outcomes for the next flush, or a push
                # stays ``accepted`` and ``recover`` publishes it a second time.
                self._published[:0] = published
                self._failed[:0] = failed
                raise

    async def recover(self) -> None:
        """Queue pushes left ``accepted`` by a dead process; fail those past their ttl."""
        logs = await self.db(
            _orphans, self.node_id, self.dead_nodes, self.orphan_after_s, self.clock()
        )
        for log in logs:
            if log.id not in self._pending_ids:
                self.submit(push_message(log))
        if logs:
            logger.info("relay recovered %d unpublished push(es)", len(logs))


#: Ids per UPDATE statement when outcomes are written (database parameter limits).
OUTCOME_CHUNK = 500
_outcome_sql: dict[str, tuple[str, str]] = {}


def _record_outcomes(published: list[str], failed: list[str]) -> None:
    """Mark pushes published (keeping an earlier ``published_at``, never moving a push
    back from ``delivered``) or failed. Plain SQL written once per database: compiling the
    ORM's ``id__in`` cost more than the UPDATE at thousands of pushes a second."""
    now = PushLog._meta.get_field("published_at").get_db_prep_save(timezone.now(), connection)
    sql = _outcome_sql.get(connection.vendor)
    if sql is None:
        q = connection.ops.quote_name
        c = {f.attname: q(str(f.column)) for f in PushLog._meta.concrete_fields}
        table = q(PushLog._meta.db_table)
        sql = _outcome_sql[connection.vendor] = (
            f"UPDATE {table} SET {c['published_at']} = COALESCE({c['published_at']}, %%s), "
            f"{c['status']} = CASE WHEN {c['status']} = %%s THEN %%s ELSE {c['status']} END "
            f"WHERE {c['id']} IN (%s)",
            f"UPDATE {table} SET {c['status']} = %%s, {c['error']} = %%s "
            f"WHERE {c['id']} IN (%s) AND {c['status']} = %%s",
        )
    published_sql, failed_sql = sql
    accepted = PushStatus.ACCEPTED.value
    with transaction.atomic(), connection.cursor() as cursor:
        for start in range(0, len(published), OUTCOME_CHUNK):
            ids = published[start:start + OUTCOME_CHUNK]
            cursor.execute(published_sql % ", ".join(["%s"] * len(ids)),
                           [now, accepted, PushStatus.PUBLISHED.value, *ids])
        for start in range(0, len(failed), OUTCOME_CHUNK):
            ids = failed[start:start + OUTCOME_CHUNK]
            cursor.execute(failed_sql % ", ".join(["%s"] * len(ids)),
                           [PushStatus.FAILED.value, TTL_FAILURE, *ids, accepted])


def _orphans(
    node_id: str, dead_nodes: Callable[[], list[str]], older_than_s: float, now: float
) -> list[PushLog]:
    owners = [node_id, *dead_nodes()]
    now_dt = datetime.fromtimestamp(now, tz=UTC)
    PushLog.objects.filter(status=PushStatus.ACCEPTED, expires_at__lte=now_dt).update(
        status=PushStatus.FAILED, error=TTL_FAILURE
    )
    return list(
        PushLog.objects.filter(
            status=PushStatus.ACCEPTED,
            accepted_node__in=owners,
            created_at__lte=now_dt - timedelta(seconds=older_than_s),
        ).order_by("created_at")[:10_000]
    )
