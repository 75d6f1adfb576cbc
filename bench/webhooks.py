"""The webhooks scenario (issue #15): webhook calls per second with pushes flowing, and push
throughput with webhooks on against off, side by side on one node in one run.

    python -m bench.webhooks [--clients 200] [--rate 500] [--duration 10] [--events 40000]
    python -m bench.webhooks --env DATABASE_URL=postgres://user@127.0.0.1:5432/bench

1. One gateway node (SQLite, local broker, ``GATEWAY_WEBHOOK_ALLOW_PRIVATE=1``); a fast
   receiver in a process of its own (``tests.support.receiver``: 200 to every call);
   ``--clients`` users connected.
2. **off**: targeted pushes at ``--rate`` for ``--duration`` s, no endpoint registered.
3. An endpoint is registered and ``--events`` events are stored in the outbox (as the node
   stores presence events: one event, one delivery each), due a few seconds later.
4. **on**: the same pushes again while the node sends the backlog to the receiver.
5. **off** again, so that drift over the run (a warmer process, a fuller database) does not
   count as the webhooks' cost: "off" is the mean of both.

One JSON line: ``webhook_calls_per_s`` (calls the receiver got during the on phase over its
length), ``push_ratio`` (deliveries/s on over off; the target is at least 0.8) and what
each phase measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import Stats, connect_many, wait_received
from bench.run import GATEWAY_ENV, ProcessMeter, Pusher, gateway, token
from tests.support.gateway import REPO, GatewayProcess, free_port
from tests.support.receiver import COUNT_PATH

#: Stored before the first phase, due only tomorrow: writing them (seconds of SQLite's one
#: write lock) must not fall into a measured phase.
SEED = """
import time
from datetime import UTC, datetime, timedelta
from django.db import transaction
from webhooks import services
from webhooks.models import Delivery
with transaction.atomic():
    for start in range(0, {n}, 5000):
        services.events_emit([services.NewEvent(app="default", type="user.online",
            data={{"user": f"seed{{i}}", "at": int(time.time() * 1000), "sessions": 1}})
            for i in range(start, min({n}, start + 5000))])
    Delivery.objects.filter(state="pending").update(
        next_attempt_at=datetime.now(tz=UTC) + timedelta(days=1))
print(Delivery.objects.filter(state="pending").count())
"""
#: At the start of the on phase: one UPDATE makes the backlog due.
DUE_NOW = """
from django.utils import timezone
from webhooks.models import Delivery
print(Delivery.objects.filter(state="pending").update(next_attempt_at=timezone.now()))
"""


def start_receiver() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.receiver", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise RuntimeError("the receiver did not start")
    return proc, port


def received(port: int) -> int:
    return int(httpx.get(f"http://127.0.0.1:{port}{COUNT_PATH}", timeout=10).text)


async def push_phase(gw: GatewayProcess, users: list[str], stats: Stats, *, rate: float,
                     duration_s: float, meter: ProcessMeter) -> dict[str, Any]:
    pusher = Pusher(gw=gw)
    before, cpu_before, t0 = stats.received, meter.cpu_s(), time.perf_counter()
    achieved = await pusher.run(rate=rate, duration_s=duration_s,
                                users_of=lambda i: [random.choice(users)])
    await wait_received(stats, before + pusher.sent, timeout_s=max(10.0, duration_s))
    elapsed = time.perf_counter() - t0
    await pusher.close()
    got = stats.received - before
    return {"achieved_push_rate": round(achieved, 1), "push_errors": pusher.errors,
            "deliveries_per_s": round(got / elapsed, 1), "loss": pusher.sent - got,
            "elapsed_s": round(elapsed, 2),
            "server_cpu_pct": round((meter.cpu_s() - cpu_before) / elapsed * 100, 1)}


async def scenario(*, clients: int, rate: float, duration_s: float, events: int,
                   workdir: Path) -> dict[str, Any]:
    receiver, port = start_receiver()
    try:
        with gateway({"GATEWAY_WEBHOOK_ALLOW_PRIVATE": "1"}, workdir) as gw:
            assert gw.proc is not None
            meter = ProcessMeter(gw.proc.pid)
            users = [f"wh{i}" for i in range(clients)]
            stats = Stats()
            # The run outlasts the heartbeat timeout (60 s): the clients ping.
            conns, connect = await connect_many(
                [f"{gw.ws_url}?token={token(u)}" for u in users], stats, ping_every_s=20)
            key = gw.api_key("bench-webhooks")
            response = await asyncio.to_thread(
                httpx.post, f"{gw.url}/api/v1/webhooks", timeout=10,
                                  headers={"Authorization": f"Token {key}"},
                                  json={"url": f"http://127.0.0.1:{port}/hook",
                                        "events": ["user.online", "user.offline"]})
            response.raise_for_status()
            await asyncio.sleep(3)  # the connected users' user.online events are sent
            seeded = int(gw.manage("shell", "-c", SEED.format(n=events),
                                   timeout=300).strip().splitlines()[-1])
            await asyncio.sleep(2)
            off1 = await push_phase(gw, users, stats, rate=rate, duration_s=duration_s,
                                    meter=meter)
            calls_before = received(port)
            pending = int(gw.manage("shell", "-c", DUE_NOW).strip().splitlines()[-1])
            t_on = time.perf_counter()
            on = await push_phase(gw, users, stats, rate=rate, duration_s=duration_s,
                                  meter=meter)
            on_s = time.perf_counter() - t_on
            calls_on = received(port) - calls_before
            drain_started = time.perf_counter()
            # The receiver is another process: its count is polled.
            while received(port) - calls_before < pending and \
                    time.perf_counter() - drain_started < 120:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            drained_s = time.perf_counter() - t_on
            total_calls = received(port) - calls_before
            off2 = await push_phase(gw, users, stats, rate=rate, duration_s=duration_s,
                                    meter=meter)
            await asyncio.gather(*(c.close() for c in conns))
    finally:
        receiver.terminate()
        receiver.wait(10)
    off_rate = (off1["deliveries_per_s"] + off2["deliveries_per_s"]) / 2
    return {
        "scenario": "webhooks", "clients": clients, "connect": connect,
        "database": "postgresql" if GATEWAY_ENV.get("DATABASE_URL", "").startswith("postgres")
        else "sqlite",
        "offered_push_rate": rate, "events_seeded": seeded, "events_due": pending,
        "webhook_calls_per_s": round(calls_on / on_s, 1),
        "webhook_calls_during_on": calls_on,
        "webhook_all_sent_s": round(drained_s, 2), "webhook_calls_total": total_calls,
        "webhook_overall_per_s": round(total_calls / drained_s, 1),
        "push_ratio": round(on["deliveries_per_s"] / max(1.0, off_rate), 3),
        "closes": stats.summary()["closes"],
        "off_before": off1, "on": on, "off_after": off2,
        "pass": calls_on / on_s >= 2000 and on["deliveries_per_s"] >= 0.8 * off_rate,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--events", type=int, default=40000)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the gateway (repeatable), e.g. "
                             "DATABASE_URL=postgres://…")
    args = parser.parse_args(argv)
    GATEWAY_ENV.update(item.split("=", 1) for item in args.env)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-webhooks-"))
    print(json.dumps(asyncio.run(scenario(
        clients=args.clients, rate=args.rate, duration_s=args.duration, events=args.events,
        workdir=workdir))), flush=True)


if __name__ == "__main__":
    main()
