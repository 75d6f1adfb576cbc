"""Kept pushes under load (PROTOCOL.md section 6, issue 13); each scenario prints JSON lines.

    python -m bench.kept rest --clients 1000 --phase 5 --phases 4     # ttl 0 vs 60, one run
    python -m bench.kept latency --clients 10000 --rate 1500 --duration 10 [--ack]
    python -m bench.kept resume --clients 30 --missed 100
    python -m bench.kept storm --clients 5000 --rate 200 [--standby]
    python -m bench.kept retention --clients 1000 --rate 500 --duration 120

``rest``: single-push REST as fast as ``--in-flight`` keep-alive connections go, alternating
``ttl: 0`` and ``ttl: 60`` phases on one node and one client pool; pushes/s of each and the
ratio. ``latency``: pushes at a steady rate to random connected users, a ``ttl: 0`` phase
then a ``ttl: 60`` phase on one node; push sent → frame parsed. ``resume``: per client, one
push it processes (its ``since``), then ``--missed`` kept pushes while it is away (one batch
request), then the reconnect with ``since``: time to the last replayed frame, from the TCP
connect and from the 101 answer. ``storm``: ``--clients`` users connected and acking, kept
pushes flowing, the node drained (SIGTERM, 4012) and started again on the same data dir and
port; every client reconnects with ``since`` its last push; time until all are back, and
every accepted push checked against what its user received (lost, duplicates); with
``--standby`` they reconnect to a second node instead, which takes the pushes throughout.
``retention``: a long mixed load, then the rows by table before and after
``prunegateway``.

Every loop is bounded in count and time; every gateway started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.loadgen import (
    OP_TEXT,
    Client,
    HttpPool,
    Stats,
    client_frame,
    connect_many,
    source_addresses,
    wait_received,
)
from bench.run import ProcessMeter, token
from tests.monitoring.support import ThrowawayRedis
from tests.support.gateway import GatewayProcess, start_gateway

SERVER = {"name": "daphne"}
#: ``--env NAME=VALUE``: for every gateway started.
EXTRA_ENV: dict[str, str] = {}
BASE_ENV = {"GATEWAY_API_RATE_PER_SECOND": "0", "GATEWAY_LOG_LEVEL": "WARNING"}
_ID_KEY = b'"id":"'
#: Clients heartbeat like real ones: a run outlasts the 60 s heartbeat timeout.
PING_EVERY_S = 20.0


# --- pure helpers (tests/bench/test_kept.py) ----------------------------------------------------

def push_id(payload: bytes | bytearray) -> str | None:
    """The ``id`` of a push frame as the gateway writes it (compact JSON, ``id`` first after
    ``type``), without ``json.loads``."""
    i = payload.find(_ID_KEY)
    if i < 0:
        return None
    j = i + len(_ID_KEY)
    end = payload.find(b'"', j)
    return bytes(payload[j:end]).decode() if end > j else None


def percentile_ms(values_s: Sequence[float], p: float) -> float | None:
    """The ``p`` quantile (0..1, nearest rank below) of seconds, in ms, rounded to 0.01."""
    if not values_s:
        return None
    ordered = sorted(values_s)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def loss_report(accepted: dict[str, set[str]], received: dict[str, set[str]]) -> dict[str, int]:
    """Accepted pushes (per user) that never reached their user, and how many there were."""
    lost = sum(len(ids - received.get(user, set())) for user, ids in accepted.items())
    return {"accepted": sum(len(ids) for ids in accepted.values()), "lost": lost}


# --- clients that know which pushes they got ----------------------------------------------------

@dataclass
class UserLog:
    """One user's side across its connections: what it got, and what the API accepted."""

    user: str
    last_id: str | None = None
    frames: int = 0
    ids: set[str] = field(default_factory=set)
    accepted: set[str] = field(default_factory=set)
    welcomes: list[dict[str, Any]] = field(default_factory=list)


class TrackingClient(Client):
    """A load client that records each push's id for its user (and may ack it), with the
    perf-counter times of the 101 answer, the welcome and the ``want``-th push."""

    def __init__(self, url: str, stats: Stats, log: UserLog, *, ack: bool = False,
                 want: int | None = None, ping_every_s: float | None = PING_EVERY_S) -> None:
        super().__init__(url, stats, ping_every_s=ping_every_s)
        self.log = log
        self.ack = ack
        self.want = want
        self.pushes = 0
        self.opened_at: float | None = None
        self.welcomed_at: float | None = None
        self.wanted_at: float | None = None
        self.got_wanted: asyncio.Future[None] = self.loop.create_future()

    def _check_handshake(self, head: bytes) -> None:
        super()._check_handshake(head)
        self.opened_at = time.perf_counter()

    def _on_text(self, payload: bytes | bytearray, now: float) -> None:
        if self.welcomed_at is None:
            self.welcomed_at = time.perf_counter()
            with contextlib.suppress(ValueError):
                self.log.welcomes.append(json.loads(payload))
        super()._on_text(payload, now)
        if not payload.startswith(b'{"type":"push"'):
            return
        pid = push_id(payload)
        if pid is None:
            return
        log = self.log
        log.frames += 1
        log.ids.add(pid)
        if log.last_id is None or pid > log.last_id:
            log.last_id = pid
        self.pushes += 1
        if self.ack:
            self._write(client_frame(OP_TEXT, b'{"type":"ack","id":"' + pid.encode() + b'"}'))
        if self.want is not None and self.pushes == self.want:
            self.wanted_at = time.perf_counter()
            self.got_wanted.set_result(None)


async def open_tracking(url: str, stats: Stats, log: UserLog, *, source: str | None = None,
                        ack: bool = False, want: int | None = None,
                        timeout_s: float = 30) -> TrackingClient:
    loop = asyncio.get_running_loop()
    client = TrackingClient(url, stats, log, ack=ack, want=want)
    try:
        await asyncio.wait_for(loop.create_connection(
            lambda: client, client.host, client.port,
            local_addr=(source, 0) if source else None), timeout_s)
        await asyncio.wait_for(asyncio.shield(client.welcomed), timeout_s)
    except BaseException:
        if client.transport is not None:
            client.transport.abort()
        raise
    client.start()
    return client


def ws_url(gw: GatewayProcess, user: str, since: str | None = None) -> str:
    return f"{gw.ws_url}?token={token(user)}" + (f"&since={since}" if since else "")


# --- gateways and pushes ------------------------------------------------------------------------

def start(workdir: Path, node_id: str, *, port: int | None = None,
          env: dict[str, str] | None = None, migrate: bool = True) -> GatewayProcess:
    return start_gateway(workdir, node_id=node_id, port=port,
                         env={**BASE_ENV, **EXTRA_ENV, **(env or {})},
                         args=["--server", SERVER["name"]], migrate=migrate)


@contextlib.contextmanager
def node(workdir: Path, node_id: str, **kwargs: Any) -> Iterator[GatewayProcess]:
    gw = start(workdir, node_id, **kwargs)
    try:
        yield gw
    finally:
        gw.stop()


def body(users: list[str], ttl: int) -> bytes:
    return json.dumps({"users": users, "ttl": ttl, "data": {"t": time.time()}},
                      separators=(",", ":")).encode()


class Pushes:
    """Single-push REST requests over a keep-alive pool; counts, and accepted ids per user."""

    def __init__(self, gw: GatewayProcess, *, in_flight: int = 32) -> None:
        self.http = HttpPool(gw.host, gw.port, size=in_flight,
                             headers={"Authorization": f"Token {gw.api_key()}"})
        self.gate = asyncio.Semaphore(in_flight)
        self.sent = 0
        self.errors = 0
        #: Seconds from each accepted push's request to its 202.
        self.answer_s: list[float] = []

    async def one(self, user: str, ttl: int, accepted: set[str] | None = None) -> bool:
        started = time.perf_counter()
        try:
            status, content = await asyncio.wait_for(
                self.http.post("/api/v1/push", body([user], ttl)), 30)
        except Exception:
            self.errors += 1
            return False
        if status != 202:
            self.errors += 1
            return False
        self.answer_s.append(time.perf_counter() - started)
        self.sent += 1
        if accepted is not None:
            accepted.add(json.loads(content)["id"])
        return True

    async def steady(self, *, rate: float, duration_s: float, ttl: int,
                     pick: Callable[[], UserLog | str]) -> float:
        """``rate`` pushes/s for ``duration_s`` (at most ``in_flight`` waiting); achieved rate."""
        started = time.perf_counter()
        sent_before = self.sent
        tasks: set[asyncio.Task[bool]] = set()
        i = 0
        while (now := time.perf_counter()) - started < duration_s:
            due = started + i / rate
            if due > now:
                await asyncio.sleep(due - now)
            target = pick()

            async def go(target: UserLog | str = target) -> bool:
                async with self.gate:
                    if isinstance(target, UserLog):
                        return await self.one(target.user, ttl, target.accepted)
                    return await self.one(target, ttl)

            task = asyncio.create_task(go())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.wait(tasks, timeout=35)
        return (self.sent - sent_before) / (time.perf_counter() - started)

    async def flat_out(self, *, duration_s: float, ttl: int, workers: int,
                       pick: Callable[[], str]) -> int:
        """Closed loop: ``workers`` requests always in flight for ``duration_s``; pushes sent."""
        deadline = time.perf_counter() + duration_s
        sent_before = self.sent

        async def worker() -> None:
            while time.perf_counter() < deadline:
                await self.one(pick(), ttl)

        await asyncio.gather(*(worker() for _ in range(workers)))
        return self.sent - sent_before

    async def close(self) -> None:
        await self.http.aclose()


# --- scenarios ----------------------------------------------------------------------------------

async def rest(*, clients: int, phase_s: float, phases: int, in_flight: int,
               workdir: Path) -> list[dict[str, Any]]:
    users = [f"r{i}" for i in range(clients)]
    stats = Stats()
    out: list[dict[str, Any]] = []
    with node(workdir, "kept-rest") as gw:
        assert gw.proc is not None
        meter = ProcessMeter(gw.proc.pid)
        conns, connect = await connect_many([ws_url(gw, u) for u in users], stats,
                                             ping_every_s=PING_EVERY_S)
        pushes = Pushes(gw, in_flight=in_flight)
        by_ttl: dict[int, list[float]] = {0: [], 60: []}
        cpu_by_ttl: dict[int, list[float]] = {0: [], 60: []}
        await pushes.flat_out(duration_s=1.0, ttl=0, workers=in_flight,
                              pick=lambda: random.choice(users))  # warm-up, not counted
        for n in range(phases):
            ttl = 0 if n % 2 == 0 else 60
            cpu0, t0 = meter.cpu_s(), time.perf_counter()
            sent = await pushes.flat_out(duration_s=phase_s, ttl=ttl, workers=in_flight,
                                         pick=lambda: random.choice(users))
            elapsed = time.perf_counter() - t0
            by_ttl[ttl].append(sent / elapsed)
            cpu_by_ttl[ttl].append((meter.cpu_s() - cpu0) / max(1, sent) * 1e6)
            out.append({"scenario": "kept-rest-phase", "ttl": ttl, "phase": n,
                        "pushes_per_s": round(sent / elapsed, 1),
                        "server_cpu_us_per_push": round(cpu_by_ttl[ttl][-1], 1)})
        drain_s = await wait_received(stats, pushes.sent, timeout_s=15)
        mean = {ttl: sum(v) / len(v) for ttl, v in by_ttl.items() if v}
        out.append({
            "scenario": "kept-rest", "gateway_server": SERVER["name"], "clients": clients,
            "connect": connect, "in_flight": in_flight, "phase_s": phase_s, "phases": phases,
            "ttl0_pushes_per_s": round(mean.get(0, 0), 1),
            "ttl60_pushes_per_s": round(mean.get(60, 0), 1),
            "ttl60_vs_ttl0": ratio(mean.get(60, 0), mean.get(0, 0)),
            "ttl0_cpu_us_per_push": round(sum(cpu_by_ttl[0]) / max(1, len(cpu_by_ttl[0])), 1),
            "ttl60_cpu_us_per_push": round(sum(cpu_by_ttl[60]) / max(1, len(cpu_by_ttl[60])), 1),
            "push_errors": pushes.errors, "delivered": stats.received,
            "loss": pushes.sent - stats.received, "drain_s": round(drain_s, 2),
        })
        await pushes.close()
        await asyncio.gather(*(c.close() for c in conns))
    return out


async def latency(*, clients: int, rate: float, duration_s: float, ttls: Sequence[int],
                  ack: bool, workdir: Path) -> list[dict[str, Any]]:
    logs = [UserLog(f"l{i}") for i in range(clients)]
    stats = Stats()
    out: list[dict[str, Any]] = []
    with node(workdir, "kept-latency") as gw:
        assert gw.proc is not None
        meter = ProcessMeter(gw.proc.pid)
        sources = source_addresses()
        gate = asyncio.Semaphore(200)
        started = time.perf_counter()

        async def connect(log: UserLog) -> TrackingClient | None:
            async with gate:
                try:
                    return await open_tracking(ws_url(gw, log.user), stats, log,
                                               source=next(sources), ack=ack)
                except Exception:
                    return None

        opened = await asyncio.wait_for(asyncio.gather(*(connect(lg) for lg in logs)), 180)
        conns = [c for c in opened if c is not None]
        connect_s = time.perf_counter() - started
        pushes = Pushes(gw)
        for ttl in ttls:
            stats.received, stats.latencies_s = 0, []
            pushes.answer_s = []
            sent_before = pushes.sent
            cpu0, t0 = meter.cpu_s(), time.perf_counter()
            achieved = await pushes.steady(rate=rate, duration_s=duration_s, ttl=ttl,
                                           pick=lambda: random.choice(logs).user)
            expected = pushes.sent - sent_before
            drain_s = await wait_received(stats, expected, timeout_s=15)
            elapsed = time.perf_counter() - t0
            out.append({
                "scenario": "kept-latency", "gateway_server": SERVER["name"], "ttl": ttl,
                "ack": ack, "clients": clients, "connected": len(conns),
                "connect_s": round(connect_s, 1), "offered_push_rate": rate,
                "achieved_push_rate": round(achieved, 1), "push_errors": pushes.errors,
                "expected": expected, "loss": expected - stats.received,
                "drain_s": round(drain_s, 2), **stats.summary(),
                "answer_ms": {"p50": percentile_ms(pushes.answer_s, 0.5),
                              "p99": percentile_ms(pushes.answer_s, 0.99)},
                "server_cpu_pct": round((meter.cpu_s() - cpu0) / elapsed * 100, 1),
            })
        await pushes.close()
        await asyncio.gather(*(c.close() for c in conns))
    return out


async def resume(*, clients: int, missed: int, workdir: Path) -> list[dict[str, Any]]:
    stats = Stats()
    rows: list[dict[str, Any]] = []
    with node(workdir, "kept-resume") as gw:
        pushes = Pushes(gw, in_flight=4)
        for i in range(clients):
            log = UserLog(f"z{i}-{time.monotonic_ns() % 10**6}")
            first = await open_tracking(ws_url(gw, log.user), stats, log, ack=True, want=1)
            await pushes.one(log.user, 60)
            await asyncio.wait_for(asyncio.shield(first.got_wanted), 10)
            since = log.last_id
            await first.close()
            await asyncio.sleep(0.1)
            payload = json.dumps({"pushes": [
                {"users": [log.user], "ttl": 60, "data": {"n": n}} for n in range(missed)]})
            status, _ = await pushes.http.post("/api/v1/push/batch", payload.encode())
            assert status == 202, status
            await asyncio.sleep(0.3)  # relayed (to nobody) and settled before the reconnect
            t0 = time.perf_counter()
            again = await open_tracking(ws_url(gw, log.user, since), stats, log, want=missed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(again.got_wanted), 10)
            recovery = log.welcomes[-1].get("recovery", {})
            rows.append({"connect_to_last_s": (again.wanted_at or float("nan")) - t0,
                         "open_to_last_s": (again.wanted_at or float("nan"))
                         - (again.opened_at or t0),
                         "open_to_welcome_s": (again.welcomed_at or t0) - (again.opened_at or t0),
                         "got": again.pushes, "recovery": recovery})
            await again.close()
        await pushes.close()
    ok = [r for r in rows if r["got"] >= missed]
    return [{
        "scenario": "kept-resume", "gateway_server": SERVER["name"], "clients": clients,
        "missed": missed, "complete_replays": len(ok),
        "recovery_sample": rows[-1]["recovery"] if rows else None,
        "connect_to_last_within_50ms": sum(1 for r in ok if r["connect_to_last_s"] <= 0.05),
        **{f"{name}_ms": {"p50": percentile_ms([r[f"{name}_s"] for r in ok], 0.5),
                          "p99": percentile_ms([r[f"{name}_s"] for r in ok], 0.99),
                          "max": percentile_ms([r[f"{name}_s"] for r in ok], 1.0)}
           for name in ("connect_to_last", "open_to_last", "open_to_welcome")},
    }]


async def storm(*, clients: int, rate: float, before_s: float, after_s: float,
                concurrency: int, standby: bool, workdir: Path) -> list[dict[str, Any]]:
    """With ``standby``, a second node (the two sharing a SQLite file and a throwaway
    ``redis-server`` broker, as a cluster does) takes the pushes throughout and every
    reconnect, and the drained node is not started again."""
    logs = [UserLog(f"s{i}") for i in range(clients)]
    stats = Stats()
    sources = source_addresses()
    gate = asyncio.Semaphore(concurrency)
    deadline = time.perf_counter() + 180
    reconnected_at: list[float] = []
    attempts = 0
    env: dict[str, str] = {}
    redis: ThrowawayRedis | None = None
    other: GatewayProcess | None = None
    if standby:
        redis = ThrowawayRedis(workdir)
        redis.start()
        (workdir / "shared").mkdir()
        env = {"GATEWAY_DATA_DIR": str(workdir / "shared"), "GATEWAY_BROKER": "redis",
               "REDIS_URL": redis.url}
    gw = start(workdir, "kept-storm", env=env)
    port = gw.port
    live: list[TrackingClient] = []
    try:
        if standby:
            other = start(workdir, "kept-storm-b", env=env, migrate=False)
        async def keep(log: UserLog, first: bool) -> None:
            """Connect (again, with ``since``) until connected; then wait for a close."""
            nonlocal attempts
            delay = 0.0 if first else random.uniform(0, 0.3)
            while time.perf_counter() < deadline:
                await asyncio.sleep(delay)
                async with gate:
                    attempts += 0 if first else 1
                    try:
                        to = gw if first or other is None else other
                        client = await open_tracking(
                            ws_url(to, log.user, None if first else log.last_id), stats, log,
                            source=next(sources), ack=True, timeout_s=10)
                    except Exception:
                        delay = min(1.0, max(0.1, delay * 2)) * random.uniform(0.5, 1.0)
                        continue
                live.append(client)
                if not first:
                    reconnected_at.append(time.perf_counter())
                return

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(keep(lg, True) for lg in logs)), 180)
        connect_s = time.perf_counter() - t0
        pushes = Pushes(other or gw)
        pusher = asyncio.create_task(pushes.steady(
            rate=rate, duration_s=before_s + after_s + 60, ttl=60,
            pick=lambda: random.choice(logs)))
        await asyncio.sleep(before_s)
        first_conns = list(live)
        live.clear()
        watchers = [asyncio.create_task(_reconnect_after(c, log, keep))
                    for c, log in zip(first_conns, [c.log for c in first_conns], strict=True)]
        term_at = time.perf_counter()
        stop_code = await asyncio.to_thread(gw.stop, signal.SIGTERM, 90.0)
        stopped_at = time.perf_counter()
        if other is None:
            gw = await asyncio.to_thread(start, workdir, "kept-storm", port=port)
            ready_at = time.perf_counter()
        else:
            ready_at = term_at  # the standby was ready all along
        await asyncio.wait_for(asyncio.gather(*watchers), 120)
        all_back_at = time.perf_counter()
        await asyncio.sleep(after_s)
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pusher
        await asyncio.sleep(0.5)  # answers still in flight
        accepted = {lg.user: set(lg.accepted) for lg in logs}
        received = {lg.user: lg.ids for lg in logs}
        settle_deadline = time.perf_counter() + 20
        while (loss_report(accepted, received)["lost"]  # noqa: ASYNC110 (counters the clients bump)
               and time.perf_counter() < settle_deadline):
            await asyncio.sleep(0.2)
        report = loss_report(accepted, received)
        lost_sample = sorted((user, push) for user, ids in accepted.items()
                             for push in ids - received.get(user, set()))[:20]
        (workdir / "lost.json").write_text(json.dumps(lost_sample))
        frames = sum(lg.frames for lg in logs)
        unique = sum(len(lg.ids) for lg in logs)
        closes: dict[int | None, int] = {}
        for c in first_conns:
            closes[c.close_code] = closes.get(c.close_code, 0) + 1
        recov = [lg.welcomes[-1].get("recovery") for lg in logs if len(lg.welcomes) > 1]
        result = {
            "scenario": "kept-storm", "gateway_server": SERVER["name"], "clients": clients,
            "standby": standby, "workdir": str(workdir),
            "connected_first": len(first_conns), "connect_s": round(connect_s, 1),
            "push_rate": rate, "push_errors": pushes.errors, **report,
            "frames": frames, "unique": unique, "duplicates": frames - unique,
            "first_closes": {str(k): v for k, v in closes.items()},
            "stop_exit": stop_code, "drain_s": round(stopped_at - term_at, 2),
            "restart_s": None if standby else round(ready_at - stopped_at, 2),
            "reconnected": len(reconnected_at), "reconnect_attempts": attempts,
            "all_back_after_ready_s": round(all_back_at - ready_at, 2),
            "all_back_after_sigterm_s": round(all_back_at - term_at, 2),
            "all_back_after_first_reconnect_s": round(
                all_back_at - min(reconnected_at), 2) if reconnected_at else None,
            "reconnect_p50_after_ready_s": round(sorted(reconnected_at)[len(reconnected_at) // 2]
                                                 - ready_at, 2) if reconnected_at else None,
            "recovered_with_since": sum(1 for r in recov if r),
            "recovery_complete": sum(1 for r in recov if r and r.get("complete")),
            "recovery_replayed": sum(r.get("replayed", 0) for r in recov if r),
        }
        await pushes.close()
        await asyncio.gather(*(c.close() for c in live))
        return [result]
    finally:
        gw.stop()
        if other is not None:
            other.stop()
        if redis is not None:
            redis.stop()


async def _reconnect_after(client: TrackingClient, log: UserLog,
                           keep: Callable[[UserLog, bool], Any]) -> None:
    await asyncio.wait_for(asyncio.shield(client.lost), 60)
    await keep(log, False)


#: Counted before and after the prune (``retention``): the tables kept pushes grow.
_COUNT_ROWS = """
import json
from django.db.models import Count
from push_app.models import PushDelivery, PushLog, PushRecipient
from sessions_app.models import SessionRecord
from webhooks.models import Event
print(json.dumps({
    "push_logs": PushLog.objects.count(),
    "recipients": PushRecipient.objects.count(),
    "recipients_by_state": dict(PushRecipient.objects.values_list("state")
                                .annotate(n=Count("id")).order_by("state")),
    "deliveries": PushDelivery.objects.count(),
    "sessions": SessionRecord.objects.count(),
    "webhook_events": Event.objects.count(),
}))
"""


async def retention(*, clients: int, rate: float, duration_s: float, keep_ttl: int,
                    workdir: Path) -> list[dict[str, Any]]:
    """Half the users connected and acking, half away; targeted pushes at ``rate`` for
    ``duration_s``, half ``ttl: 0`` and half ``ttl: keep_ttl``, plus ten ``ttl: 3600`` to
    users away; once the short ones expired, the rows by table, then ``prunegateway
    --before`` now (as a daily run finds a day-old load), then the rows again: everything
    but the ten still waiting goes."""
    online = [UserLog(f"on{i}") for i in range(clients // 2)]
    away = [f"off{i}" for i in range(clients - clients // 2)]
    everyone = [log.user for log in online] + away
    stats = Stats()
    sources = source_addresses()
    with node(workdir, "kept-retention", env={"GATEWAY_RECORD_INTERVAL": "1"}) as gw:
        gate = asyncio.Semaphore(200)

        async def connect(log: UserLog) -> TrackingClient:
            async with gate:
                return await open_tracking(ws_url(gw, log.user), stats, log,
                                           source=next(sources), ack=True)

        conns = await asyncio.wait_for(asyncio.gather(*(connect(lg) for lg in online)), 120)
        live, kept = Pushes(gw), Pushes(gw)
        started = time.perf_counter()
        await asyncio.gather(
            live.steady(rate=rate / 2, duration_s=duration_s, ttl=0,
                        pick=lambda: random.choice(everyone)),
            kept.steady(rate=rate / 2, duration_s=duration_s, ttl=keep_ttl,
                        pick=lambda: random.choice(everyone)))
        long_kept = Pushes(gw)
        for user in away[:10]:
            await long_kept.one(user, 3600)
        pushing_s = time.perf_counter() - started
        await asyncio.sleep(keep_ttl + 3)  # the short ones expire; a beat settles them
        await asyncio.gather(*(c.close() for c in conns))
        before = json.loads(gw.manage("shell", "-c", _COUNT_ROWS).strip().splitlines()[-1])
        cutoff = datetime.now(UTC).isoformat()
        t0 = time.perf_counter()
        said = gw.manage("prunegateway", "--before", cutoff, timeout=600).strip()
        prune_s = time.perf_counter() - t0
        after = json.loads(gw.manage("shell", "-c", _COUNT_ROWS).strip().splitlines()[-1])
        for p in (live, kept, long_kept):
            await p.close()
    return [{
        "scenario": "kept-retention", "gateway_server": SERVER["name"], "clients": clients,
        "rate": rate, "pushing_s": round(pushing_s, 1), "keep_ttl": keep_ttl,
        "accepted": live.sent + kept.sent + long_kept.sent,
        "push_errors": live.errors + kept.errors + long_kept.errors,
        "rows_before_prune": before, "prune_s": round(prune_s, 2), "prune_said": said,
        "rows_after_prune": after,
    }]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.kept")
    parser.add_argument("scenario",
                        choices=["rest", "latency", "resume", "storm", "retention"])
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--phase", type=float, default=5.0, help="rest: seconds per phase")
    parser.add_argument("--phases", type=int, default=4, help="rest: alternating ttl 0 / 60")
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--ttls", default="0,60", help="latency: phases, in order")
    parser.add_argument("--ack", action="store_true", help="latency: clients ack each push")
    parser.add_argument("--missed", type=int, default=100)
    parser.add_argument("--keep-ttl", type=int, default=5, help="retention: the kept pushes' ttl")
    parser.add_argument("--before", type=float, default=3.0, help="storm: pushing before drain")
    parser.add_argument("--after", type=float, default=3.0, help="storm: pushing after all back")
    parser.add_argument("--concurrency", type=int, default=500, help="storm: handshakes at once")
    parser.add_argument("--standby", action="store_true",
                        help="storm: reconnect to a second node instead of a restart")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the gateway (repeatable)")
    args = parser.parse_args(argv)
    SERVER["name"] = args.server
    EXTRA_ENV.update(item.split("=", 1) for item in args.env)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-kept-"))
    s = args.scenario
    if s == "rest":
        lines = asyncio.run(rest(clients=args.clients or 1000, phase_s=args.phase,
                                 phases=args.phases, in_flight=args.in_flight, workdir=workdir))
    elif s == "latency":
        lines = asyncio.run(latency(
            clients=args.clients or 10000, rate=args.rate or 1500, duration_s=args.duration,
            ttls=[int(t) for t in args.ttls.split(",")], ack=args.ack, workdir=workdir))
    elif s == "resume":
        lines = asyncio.run(resume(clients=args.clients or 30, missed=args.missed,
                                   workdir=workdir))
    elif s == "retention":
        lines = asyncio.run(retention(clients=args.clients or 1000, rate=args.rate or 500,
                                      duration_s=args.duration, keep_ttl=args.keep_ttl,
                                      workdir=workdir))
    else:
        lines = asyncio.run(storm(clients=args.clients or 5000, rate=args.rate or 200,
                                  before_s=args.before, after_s=args.after,
                                  concurrency=args.concurrency, standby=args.standby,
                                  workdir=workdir))
    for line in lines:
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
