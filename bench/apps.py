"""Apps: two apps against one, in one run (issue #12, PROTOCOL.md section 9).

    python -m bench.run apps [--clients 1000 --rate 50] [--targeted-clients 2000
        --targeted-rate 1000] [--duration 10] [--rounds 2] [--control] [--server uvicorn]

Two kinds by default, each measured with one app and with two, on the same gateway process:

- ``broadcast``: ``clients`` users all in the app ``default``, one broadcast every
  ``1/rate`` s; against the same number of users split evenly over ``default`` and a created
  app, one broadcast per app every ``1/rate`` s (each app's own key). Every client gets
  ``rate`` frames a second either way, so the offered deliveries/s are the same, and so is
  the burst each tick writes (``clients`` frames); what differs is that two apps take two
  REST requests and two registry lookups per tick for half the fan-out each.
- ``targeted``: ``rate`` single-user pushes a second (``POST /api/v1/push``), each to a random
  connected user, all of ``default``; against the same rate alternating between the two
  apps' keys and users. The two apps have the same user ids (``u1`` of each is another
  user), so a push that reached the other app's user would show as negative loss.

Each measurement prints one JSON line (``"scenario": "apps"``); then one line per kind
(``"scenario": "apps-ratio"``) with the two-apps ÷ one-app ratios of deliveries/s, server
CPU per delivery and p50/p99 latency, means over ``rounds`` rounds, and ``pass``: the
throughput ratio is at least ``BOUND`` (the issue's "within 5 %") and nothing was lost.
With ``--control`` the broadcast part also measures ``CONTROL`` (below), which separates
what two apps cost from what twice the pushes cost, but holds half the connections.

``--kinds multicast`` is meant to isolate the apps alone: the broadcast's clients, ticks and
deliveries, but every push names its users (``users``, ``clients/2`` of them): one app's
users in two halves, one push per half a tick, against each app's users, one push per app
a tick. Same connections, pushes, fan-out and deliveries on both sides; only the apps
differ (through the user-list path, not the broadcast one).

Both sides run against one gateway process rather than a fresh one each: a second process
adds its own variance (start-up, heap layout, a fresh SQLite file) to a comparison of a few
percent. The rounds go one-two, two-one, ... (``side_order``) so what drifts over the run
(the push log growing, the machine's other load) falls on both sides alike; the per-round
ratios are printed too, so noise shows as their spread.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.loadgen import Client, Stats, connect_many, wait_received
from bench.run import ProcessMeter, Pusher, token
from tests.support.gateway import JWT_SECRET, GatewayProcess

DEFAULT_APP = "default"
#: The created app; its id is also its users' token ``kid``.
OTHER_APP = "benchb"
#: Two apps must deliver at least this share of one app's throughput (issue #12).
BOUND = 0.95
#: Pause after connecting and after closing a side's clients, so the sessions' database
#: writes (recorded in batches) fall outside the measured window and the next side's.
SETTLE_S = 1.0
#: ``create_app``'s name for a second API key of ``default``.
SECOND_KEY = "default-2"
#: HTTP connections (and requests in flight) for a side, shared by its apps' pushers.
IN_FLIGHT = 32


#: The sides of a comparison. ``CONTROL`` (broadcast only, ``--control``): half the clients,
#: all in ``default``, two broadcasts a tick on two of its keys: the two-apps side's pushes
#: and fan-out in one app. Against one app it shows the cost of twice the pushes at half
#: the fan-out; it holds half the connections, which is cheaper per delivery on its own
#: (docs/performance.md), so ``--kinds multicast`` is the cleaner test of the apps alone.
ONE, TWO, CONTROL = "one-app", "two-apps", "control"


def side_order(rounds: int, *, control: bool = False) -> list[str]:
    """The sides in measuring order, alternating which goes first: one, two, two, one, ..."""
    sides = [ONE, TWO, CONTROL] if control else [ONE, TWO]
    order: list[str] = []
    for r in range(rounds):
        order.extend(sides if r % 2 == 0 else sides[::-1])
    return order


@dataclass
class Lane:
    """One app's part of a measurement: its pusher, its users, its connected clients."""

    app: str
    pusher: Pusher
    users: list[str]
    connected: int = 0
    conns: list[Client] = field(default_factory=list)


async def drive(*, ticks_per_s: float, duration_s: float,
                plan: Callable[[int], Sequence[tuple[Pusher, list[str] | None]]]) -> float:
    """Every ``1/ticks_per_s`` s, send the pushes ``plan(tick)`` names, for ``duration_s``
    (and at most ``ticks_per_s * duration_s`` ticks); waits for every request. Returns the
    seconds the ticks span (``ticks / ticks_per_s``), or longer if they fell behind."""
    started = time.perf_counter()
    max_ticks = int(ticks_per_s * duration_s)
    tasks: set[asyncio.Task[None]] = set()
    ticks = 0
    for i in range(max_ticks):
        now = time.perf_counter()
        if now - started >= duration_s:
            break
        ticks += 1
        due = started + i / ticks_per_s
        if due > now:
            await asyncio.sleep(due - now)
        for pusher, users in plan(i):
            task = asyncio.create_task(pusher.push(users))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    # Each request is bounded (``Pusher.push`` waits 30 s at most).
    await asyncio.gather(*tasks)
    return max(time.perf_counter() - started, ticks / ticks_per_s)


async def measure(*, gw: GatewayProcess, server: str, keys: dict[str, str],
                  secrets: dict[str, str], kind: str, layout: str, clients: int, rate: float,
                  duration_s: float) -> dict[str, Any]:
    """One side (``layout``): ``clients`` users, pushed to for ``duration_s``."""
    assert gw.proc is not None
    names = {ONE: [DEFAULT_APP], TWO: [DEFAULT_APP, OTHER_APP],
             CONTROL: [DEFAULT_APP, DEFAULT_APP]}[layout]
    if kind == "multicast" and layout == ONE:
        names = [DEFAULT_APP, DEFAULT_APP]  # two halves of one app's users
    side = f"{kind[0]}-{layout}-{time.monotonic_ns() % 10**8}"
    users = [f"{side}-u{i}" for i in range(clients // len(names))]
    stats = Stats()
    lanes = []
    for n, app in enumerate(names):
        # The same user ids in each app (``u1`` of two apps is two users); a second lane of
        # one app has users of its own, except the control's, which pushes to the same ones.
        # Each lane its own API key (``default``'s second lane its second key), so one app
        # and two apps differ in the apps, not in how many keys push.
        second = n > 0 and app == DEFAULT_APP
        lanes.append(Lane(
            app=app,
            users=[f"{side}-h{n}-u{i}" for i in range(len(users))]
            if second and layout != CONTROL else users,
            pusher=Pusher(gw=gw, api_key=keys[SECOND_KEY if second else app],
                          in_flight=IN_FLIGHT // len(names))))
    connects = []
    for n, lane in enumerate(lanes):
        if layout == CONTROL and n:
            lane.connected = lanes[0].connected
            continue
        app_arg = None if lane.app == DEFAULT_APP else lane.app
        urls = [f"{gw.ws_url}?token={token(u, secrets[lane.app], app=app_arg)}"
                for u in lane.users]
        lane.conns, connect = await connect_many(urls, stats)
        lane.connected = len(lane.conns)
        connects.append(connect)
    await asyncio.sleep(SETTLE_S)

    def broadcast_plan(i: int) -> list[tuple[Pusher, list[str] | None]]:
        # Each tick every app gets one broadcast; which goes first alternates.
        order = lanes if i % 2 == 0 else lanes[::-1]
        return [(lane.pusher, None) for lane in order]

    def multicast_plan(i: int) -> list[tuple[Pusher, list[str] | None]]:
        # A broadcast's work through the user-list path: each lane's users, named.
        order = lanes if i % 2 == 0 else lanes[::-1]
        return [(lane.pusher, lane.users) for lane in order]

    def targeted_plan(i: int) -> list[tuple[Pusher, list[str] | None]]:
        lane = lanes[i % len(lanes)]
        return [(lane.pusher, [random.choice(lane.users)])]

    meter = ProcessMeter(gw.proc.pid)
    cpu_before, t0 = meter.cpu_s(), time.perf_counter()
    plan = {"broadcast": broadcast_plan, "multicast": multicast_plan,
            "targeted": targeted_plan}[kind]
    pushing_s = await drive(ticks_per_s=rate, duration_s=duration_s, plan=plan)
    if kind != "targeted":
        expected = sum(lane.pusher.sent * lane.connected for lane in lanes)
    else:
        expected = sum(lane.pusher.sent for lane in lanes)
    drain_s = await wait_received(stats, expected, timeout_s=max(10.0, duration_s))
    elapsed = time.perf_counter() - t0
    cpu_s = meter.cpu_s() - cpu_before
    sent = sum(lane.pusher.sent for lane in lanes)
    result = {
        "kind": kind, "layout": layout, "apps": len(set(names)), "gateway_server": server,
        "clients": sum(c["connected"] + c["failed"] for c in connects),
        "connect": {"connected": sum(c["connected"] for c in connects),
                    "failed": sum(c["failed"] for c in connects),
                    "connect_per_s": [c["connect_per_s"] for c in connects]},
        "offered_push_rate": rate * (1 if kind == "targeted" else len(lanes)),
        "achieved_push_rate": round(sent / pushing_s, 1),
        "push_errors": sum(lane.pusher.errors for lane in lanes),
        "deliveries_per_s": round(stats.received / elapsed, 1),
        "elapsed_s": round(elapsed, 2),
        "expected": expected, "loss": expected - stats.received, "drain_s": round(drain_s, 2),
        **stats.summary(),
        "server_cpu_pct": round(cpu_s / elapsed * 100, 1),
        "server_cpu_us_per_delivery": round(cpu_s / max(1, stats.received) * 1e6, 2),
    }
    for lane in lanes:
        await lane.pusher.close()
        await asyncio.gather(*(c.close() for c in lane.conns))
    await asyncio.sleep(SETTLE_S)
    return result


def _side(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(get: Callable[[dict[str, Any]], float]) -> float:
        return statistics.fmean(get(r) for r in runs)

    return {
        "deliveries_per_s": round(mean(lambda r: r["deliveries_per_s"]), 1),
        "server_cpu_us_per_delivery": round(mean(lambda r: r["server_cpu_us_per_delivery"]), 2),
        "p50_ms": round(mean(lambda r: r["latency_ms"]["p50"] or 0.0), 2),
        "p99_ms": round(mean(lambda r: r["latency_ms"]["p99"] or 0.0), 2),
        "rounds": len(runs),
    }


def _ratio(two: float, one: float) -> float | None:
    return round(two / one, 3) if one else None


def compare(runs: list[dict[str, Any]], *, bound: float = BOUND) -> list[dict[str, Any]]:
    """One ``apps-ratio`` line per kind in ``runs`` (the ``apps`` lines): two apps ÷ one app,
    each side the mean of its rounds; ``pass`` if the throughput ratio is at least ``bound``
    and no side lost a frame, failed a push or a connection."""
    lines = []
    for kind in dict.fromkeys(r["kind"] for r in runs):
        one = [r for r in runs if r["kind"] == kind and r["layout"] == ONE]
        two = [r for r in runs if r["kind"] == kind and r["layout"] == TWO]
        control = [r for r in runs if r["kind"] == kind and r["layout"] == CONTROL]
        if not one or not two:
            continue
        a, b = _side(one), _side(two)
        ratio = _ratio(b["deliveries_per_s"], a["deliveries_per_s"])
        clean = all(r["loss"] == 0 and r["push_errors"] == 0 and r["connect"]["failed"] == 0
                    for r in one + two)
        extra: dict[str, Any] = {}
        if control:
            c = _side(control)
            extra = {
                "control": c,
                # Two apps against the same pushes and fan-out in one app: the apps' own cost.
                "two_apps_vs_control_throughput_ratio": _ratio(b["deliveries_per_s"],
                                                               c["deliveries_per_s"]),
                "two_apps_vs_control_cpu_ratio": _ratio(b["server_cpu_us_per_delivery"],
                                                        c["server_cpu_us_per_delivery"]),
                # Twice the pushes at half the fan-out, in one app.
                "control_vs_one_app_cpu_ratio": _ratio(c["server_cpu_us_per_delivery"],
                                                       a["server_cpu_us_per_delivery"]),
            }
        lines.append({
            "scenario": "apps-ratio", "kind": kind, "one_app": a, "two_apps": b,
            "throughput_ratio": ratio,
            # Round k of each side against each other: their spread is the run's noise.
            "round_throughput_ratios": [_ratio(t["deliveries_per_s"], o["deliveries_per_s"])
                                        for o, t in zip(one, two, strict=False)],
            "cpu_per_delivery_ratio": _ratio(b["server_cpu_us_per_delivery"],
                                             a["server_cpu_us_per_delivery"]),
            "p50_ratio": _ratio(b["p50_ms"], a["p50_ms"]),
            "p99_ratio": _ratio(b["p99_ms"], a["p99_ms"]),
            "bound": bound, "clean": clean,
            "pass": clean and ratio is not None and ratio >= bound,
            **extra,
        })
    return lines


def create_app(gw: GatewayProcess) -> tuple[dict[str, str], dict[str, str]]:
    """Create ``OTHER_APP`` on the gateway; API keys (``SECOND_KEY``: another of ``default``)
    and token secrets of both apps."""
    secret = gw.manage("createapp", OTHER_APP).strip().splitlines()[-1]
    keys = {name: gw.manage("createapikey", f"bench-{name}", "--app",
                            OTHER_APP if name == OTHER_APP else DEFAULT_APP
                            ).strip().splitlines()[-1]
            for name in (DEFAULT_APP, SECOND_KEY, OTHER_APP)}
    return keys, {DEFAULT_APP: JWT_SECRET, OTHER_APP: secret}


async def run(*, gw: GatewayProcess, server: str, clients: int, rate: float, targeted_clients: int,
              targeted_rate: float, duration_s: float, rounds: int, control: bool = False,
              kinds: Sequence[str] = ("broadcast", "targeted"),
              emit: Callable[[str, dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Every measurement (emitted as it ends), then the ratio lines. ``server`` is the
    gateway's ``rungateway --server``, passed in: under ``python -m bench.run`` that module's
    globals are ``__main__``'s, not the ``bench.run`` imported here."""
    keys, secrets = create_app(gw)
    runs: list[dict[str, Any]] = []
    parts = {"broadcast": (clients, rate), "multicast": (clients, rate),
             "targeted": (targeted_clients, targeted_rate)}
    for kind in kinds:
        n, r = parts[kind]
        sides = side_order(rounds, control=control and kind == "broadcast")
        per_round = len(sides) // rounds
        for i, layout in enumerate(sides):
            result = await measure(gw=gw, server=server, keys=keys, secrets=secrets,
                                   kind=kind, layout=layout, clients=n, rate=r,
                                   duration_s=duration_s)
            result["round"] = i // per_round + 1
            runs.append(result)
            emit("apps", result)
    return compare(runs)
