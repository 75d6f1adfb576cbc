"""The node's webhook sending loop: claim due deliveries, call endpoints, write outcomes.

One ``WebhookSender`` per node, run as a supervised loop (``gateway_node.node``). Its
guarantees (PROTOCOL.md section 7):

- **At least once.** A delivery is marked delivered only after a 2xx; a node that dies
  mid-call leaves its lease to run out, and another node (or this one, restarted) sends
  it again.
- **Isolation.** Each endpoint has its own bounded lane: at most ``concurrency`` calls in
  flight and ``room`` deliveries held. A slow or hanging endpoint fills its own lane and
  is skipped by the claims until a call ends (10 s at most); no other endpoint waits for
  it, and nothing here touches the push path (its own HTTP client and database thread).
- **Bounded.** Tasks and memory are bounded by the room per endpoint (``room_for``); an
  answer is read up to 64 KiB, kept up to 500 bytes (``webhooks.transport``).

The database work (claims, outcomes) runs on the sender's own thread, never on the node's
push-writing thread, so a slow outbox query cannot delay a push.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import h11
import httpx

from gateway_core import metrics
from gateway_core.conf import gateway_settings
from webhooks import outbox
from webhooks.addresses import SendTimeCheck
from webhooks.outbox import Claimed, Outcome
from webhooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, signature
from webhooks.transport import EXCERPT_BYTES, H11Poster, HttpxPoster, Poster

logger = logging.getLogger("gateway.webhooks")
T = TypeVar("T")

#: Any 2xx within this is success (PROTOCOL.md section 7).
CALL_TIMEOUT_S = 10.0

DbRunner = Callable[..., Awaitable[Any]]


class WebhookSender:
    #: Calls in flight per endpoint.
    concurrency = 32
    #: Deliveries held per endpoint (in flight or waiting for a slot): enough to keep a fast
    #: endpoint busy between claims, few enough that the last one held gets its call within
    #: a third of the lease at the endpoint's pace (``room_for``), well inside the lease.
    min_room = 64
    max_room = 512
    #: Deliveries claimed per round, across endpoints.
    claim_limit = 1000
    #: Between rounds (outcomes written, due deliveries claimed) when nothing woke the loop:
    #: events made by other nodes, the outcomes of a slow endpoint.
    poll_s = 0.2
    #: Outcomes that start a round at once.
    write_every = 64
    #: Between reads of the backlog for the metrics.
    backlog_every_s = 5.0

    def __init__(self, *, node_id: str, db: DbRunner, clock: Callable[[], float] = time.time,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        """``db(fn, *args)`` runs ``fn`` on the sender's database thread (the node gives it
        one of its own); ``transport`` (httpx's) replaces the network in tests."""
        self.node_id = node_id
        self.db = db
        self.clock = clock
        self.transport = transport
        self.check = SendTimeCheck()
        #: Deliveries held per endpoint: claimed, and their outcome not yet written.
        self.held: dict[str, int] = {}
        self._lanes: dict[str, asyncio.Semaphore] = {}
        #: Per endpoint, a moving average of its calls' duration (s).
        self._pace: dict[str, float] = {}
        self._outcomes: list[Outcome] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._claims: dict[str, int] = {}
        self._wake: asyncio.Event | None = None
        self._calls = {result: metrics.WEBHOOK_CALLS.labels(node_id, result)
                       for result in ("ok", "status", "timeout", "error", "refused")}
        self._latency = metrics.WEBHOOK_LATENCY.labels(node_id)
        self._failed = metrics.WEBHOOK_FAILED.labels(node_id)
        self._failing_clients: set[str] = set()

    def wake(self) -> None:
        """New deliveries may be due (an event was just stored here): claim now."""
        if self._wake is not None:
            self._wake.set()

    @property
    def in_flight(self) -> int:
        return sum(self.held.values())

    # --- the loop ---------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled: claim, send, write outcomes. Leases left by an earlier process
        of this node id are given back first (that process is gone)."""
        self._wake = asyncio.Event()
        await self.db(outbox.release, node_id=self.node_id)
        client = self.poster()
        try:
            gauges = asyncio.create_task(self._backlog_loop(), name="gateway-webhook-backlog")
            try:
                while True:
                    try:
                        claimed = await self.claim_once()
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        # The database is away: outcomes are kept, calls in flight go on.
                        logger.exception("webhook round failed; next one in 1 s")
                        await asyncio.sleep(1.0)
                        continue
                    for item in claimed:
                        self._start(client, item)
                    if len(claimed) < self.claim_limit:
                        await self._idle()
            finally:
                gauges.cancel()
                await asyncio.gather(gauges, return_exceptions=True)
                await self._shutdown()
        finally:
            await client.aclose()

    def poster(self) -> Poster:
        """The HTTP client of the calls: httpx over the test's transport, else h11's."""
        return HttpxPoster(self.transport) if self.transport is not None else H11Poster()

    async def _idle(self) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_s)
        self._wake.clear()

    @property
    def lease_s(self) -> float:
        """``GATEWAY_WEBHOOK_LEASE``: how long a claim holds; read at each round."""
        return float(gateway_settings.webhook_lease_s)

    def room_for(self, endpoint_id: str) -> int:
        """How many deliveries of this endpoint may be held: a slow one (9 s a call) gets a
        few times its concurrency, a fast one up to ``max_room``."""
        pace = self._pace.get(endpoint_id)
        if pace is None:
            return self.min_room
        budget_s = max(self.lease_s / 3 - CALL_TIMEOUT_S, 1.0)
        fits = int(self.concurrency * budget_s / max(pace, 0.05))
        return max(self.min_room, min(self.max_room, fits))

    async def claim_once(self) -> list[Claimed]:
        """One round: write the outcomes gathered so far and claim what is due, in one
        database call (``outbox.cycle``); the claimed deliveries are held from then on."""
        taken, self._outcomes = self._outcomes, []
        released: dict[str, int] = {}
        for out in taken:
            released[out.claimed.endpoint_id] = released.get(out.claimed.endpoint_id, 0) + 1
        room = {endpoint: self.room_for(endpoint) - held + released.get(endpoint, 0)
                for endpoint, held in self.held.items()}
        room.update({endpoint: self.room_for(endpoint) for endpoint in self._pace
                     if endpoint not in room})
        try:
            failed, claimed = await self.db(
                outbox.cycle, taken, retry_hours=gateway_settings.webhook_retry_hours,
                node_id=self.node_id, now=self.clock(), room=room,
                default_room=self.min_room, limit=self.claim_limit, lease_s=self.lease_s)
        except BaseException:
            self._outcomes[:0] = taken
            raise
        self._written(taken, failed)
        for item in claimed:
            self.held[item.endpoint_id] = self.held.get(item.endpoint_id, 0) + 1
            self._claims[item.token] = self._claims.get(item.token, 0) + 1
        return claimed

    def _start(self, client: Poster, item: Claimed) -> None:
        task = asyncio.create_task(self._deliver(client, item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, client: Poster, item: Claimed) -> None:
        lane = self._lanes.get(item.endpoint_id)
        if lane is None:
            lane = self._lanes[item.endpoint_id] = asyncio.Semaphore(self.concurrency)
        async with lane:
            try:
                outcome = await self.call(client, item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Never lose a held delivery to a bug here: it counts as a failed attempt.
                logger.exception("webhook call to %s failed unexpectedly", item.url)
                outcome = Outcome(item, ok=False, status=0, at=self.clock(),
                                  excerpt=f"{type(exc).__name__}: {exc}"[:EXCERPT_BYTES])
        self._outcomes.append(outcome)
        if len(self._outcomes) >= self.write_every:
            self.wake()

    async def call(self, client: Poster, item: Claimed) -> Outcome:
        """One attempt: the address check, the signed POST, its answer within 10 s."""
        refused = await self.check.refused(item.url)
        if refused is not None:
            self._calls["refused"].inc()
            return Outcome(item, ok=False, status=0, excerpt=f"refused: {refused}",
                           at=self.clock())
        sent_at = self.clock()
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: item.event_id,
                   SIGNATURE_HEADER: signature(item.secret, item.body, timestamp=int(sent_at))}
        started = time.perf_counter()
        try:
            # The whole call, body included, within the timeout: httpx's own timeouts are
            # per read, and a receiver trickling a byte every 9 s would never end.
            async with asyncio.timeout(CALL_TIMEOUT_S):
                status, excerpt = await client.post(item.url, item.body, headers)
        except TimeoutError:
            result, status, excerpt = "timeout", 0, f"no answer within {CALL_TIMEOUT_S:.0f} s"
        except httpx.TimeoutException:
            result, status, excerpt = "timeout", 0, f"no answer within {CALL_TIMEOUT_S:.0f} s"
        except (httpx.HTTPError, h11.ProtocolError, OSError, EOFError) as exc:
            result, status, excerpt = "error", 0, f"{type(exc).__name__}: {exc}"[:EXCERPT_BYTES]
        else:
            result = "ok" if 200 <= status < 300 else "status"
        took = time.perf_counter() - started
        self._latency.observe(took)
        pace = self._pace.get(item.endpoint_id)
        self._pace[item.endpoint_id] = took if pace is None else 0.8 * pace + 0.2 * took
        self._calls[result].inc()
        return Outcome(item, ok=result == "ok", status=status, excerpt=excerpt, at=self.clock())

    # --- outcomes ---------------------------------------------------------------------
    async def flush(self) -> None:
        """Write the outcomes gathered, claiming nothing (at stop); only then do their
        deliveries leave the endpoints' lanes (so claims never outrun the writes)."""
        if not self._outcomes:
            return
        taken, self._outcomes = self._outcomes, []
        try:
            failed = await self.db(outbox.complete, taken,
                                   retry_hours=gateway_settings.webhook_retry_hours)
        except BaseException:
            self._outcomes[:0] = taken
            raise
        self._written(taken, failed)
        self.wake()

    def _written(self, taken: list[Outcome], failed: int) -> None:
        """Outcomes stored (``failed`` of them ended as failed): their deliveries leave
        the endpoints' lanes."""
        if failed:
            self._failed.inc(failed)
        for out in taken:
            self._forget(out.claimed)

    def _forget(self, item: Claimed) -> None:
        held = self.held.get(item.endpoint_id, 0) - 1
        if held > 0:
            self.held[item.endpoint_id] = held
        else:
            self.held.pop(item.endpoint_id, None)
        left = self._claims.get(item.token, 0) - 1
        if left > 0:
            self._claims[item.token] = left
        else:
            self._claims.pop(item.token, None)

    async def _shutdown(self) -> None:
        """At stop: calls in flight are abandoned (at least once: they are sent again),
        outcomes already known are written, and the leases not used are given back so
        that another node need not wait for them to run out."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.flush()
            if self._claims:
                await self.db(outbox.release, tokens=list(self._claims))
        except Exception:
            logger.exception("webhook outcomes not written at stop; their leases run out")
        self.held.clear()
        self._claims.clear()

    # --- gauges -----------------------------------------------------------------------
    async def _backlog_loop(self) -> None:
        while True:
            try:
                await self.sample_backlog()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("reading the webhook backlog failed")
            await asyncio.sleep(self.backlog_every_s)

    async def sample_backlog(self) -> None:
        found: outbox.Backlog = await self.db(outbox.backlog, now=self.clock())
        metrics.WEBHOOK_BACKLOG.labels(self.node_id).set(found.pending)
        metrics.WEBHOOK_OLDEST.labels(self.node_id).set(found.oldest_age_s)
        for client in self._failing_clients | set(found.failing_s):
            metrics.WEBHOOK_FAILING.labels(self.node_id, client).set(
                found.failing_s.get(client, 0.0))
        self._failing_clients |= set(found.failing_s)
