"""Benchmark scenarios; each prints one JSON line.

    python -m bench.run broadcast --clients 1000 --rate 50 --duration 10
    python -m bench.run targeted --clients 10000 --rate 1500 --duration 10 [--batch 100]
    python -m bench.run idle --clients 19000 --duration 30 [--server baseline]
    python -m bench.run rocketmq --clients 1000 --rate 2000 --duration 10
    python -m bench.run baseline --clients 1000 --rate 50 --duration 10
    python -m bench.run all            # baseline and broadcast in one run, with ratios
    python -m bench.run all --server uvicorn   # the gateway under rungateway --server uvicorn
    python -m bench.run apps           # two apps against one (bench/apps.py)
    python -m bench.run broadcast --workers 2 --env GATEWAY_BROKER=redis \
        --env REDIS_URL=redis://127.0.0.1:6390/0 --env GATEWAY_ROCKETMQ_TOPIC=bench

Every loop is bounded by ``--duration`` plus a drain timeout, and every server it starts is
stopped at the end. Servers listen on 127.0.0.1; clients connect from many 127.x sources.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import websockets

from bench.loadgen import HttpPool, Stats, connect_many, wait_received
from tests.support.gateway import JWT_SECRET, GatewayProcess, free_port, start_gateway

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def token(user: str, secret: str = JWT_SECRET, *, app: str | None = None) -> str:
    """A client token for ``user``; ``app`` names an app other than ``default`` (header
    ``kid``, signed with that app's ``secret``: PROTOCOL.md section 9)."""
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, secret, algorithm="HS256",
                      headers=None if app is None else {"kid": app})


#: Passed to every gateway the bench starts (``--workers``, ``--env``, ``--server``).
GATEWAY_ARGS: list[str] = []
#: ``rungateway --server`` of the gateways the bench starts, reported as ``gateway_server``.
GATEWAY_SERVER = {"name": "daphne"}
GATEWAY_ENV: dict[str, str] = {}


class ProcessMeter:
    """RSS and CPU of a server process and its child processes (``--workers``), from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo.extend(int(c) for c in (task / "children").read_text().split())
        return found

    def rss_kb(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def cpu_s(self) -> float:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK


@contextlib.contextmanager
def gateway(env: dict[str, str], workdir: Path) -> Iterator[GatewayProcess]:
    base = {"GATEWAY_API_RATE_PER_SECOND": "0", "GATEWAY_LOG_LEVEL": "WARNING"}
    gw = start_gateway(workdir, node_id=f"bench-{os.getpid()}", env={**base, **env, **GATEWAY_ENV},
                       args=GATEWAY_ARGS)
    try:
        yield gw
    finally:
        gw.stop()


@contextlib.contextmanager
def baseline(workdir: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.baseline_server", str(port), JWT_SECRET], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("baseline server did not start")
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@dataclasses.dataclass
class Target:
    """The server a scenario measures: the gateway (``gw``) or the bare baseline."""

    ws_url: str
    pid: int
    port: int
    gw: GatewayProcess | None = None


@contextlib.contextmanager
def server_under_test(server: str, env: dict[str, str], workdir: Path) -> Iterator[Target]:
    """``server="baseline"``: the bare ``websockets`` server; otherwise a gateway node."""
    if server == "baseline":
        with baseline(workdir) as (port, pid):
            yield Target(ws_url=f"ws://127.0.0.1:{port}/ws/", pid=pid, port=port)
    else:
        with gateway(env, workdir) as gw:
            assert gw.proc is not None
            yield Target(ws_url=gw.ws_url, pid=gw.proc.pid, port=gw.port, gw=gw)


class Pusher:
    """Sends pushes at a steady rate: REST to the gateway, or control frames to the baseline."""

    def __init__(self, *, gw: GatewayProcess | None = None, control: Any = None,
                 batch: int = 1, in_flight: int = 32, api_key: str | None = None) -> None:
        self.gw = gw
        self.control = control
        self.batch = batch
        # Raw keep-alive HTTP/1.1, not httpx: httpx cost ~1 ms of client CPU per request
        # and capped the offered rate at a few hundred requests a second.
        self.http = HttpPool(
            gw.host, gw.port, size=in_flight,
            headers={"Authorization": f"Token {api_key or gw.api_key()}"},
        ) if gw else None
        self.gate = asyncio.Semaphore(in_flight)
        self.sent = 0
        self.errors = 0

    async def push(self, users: list[str] | None) -> None:
        bodies = [{"data": {"t": time.time()}} for _ in range(self.batch)]
        for body in bodies:
            if users is None:
                body["broadcast"] = True
            else:
                body["users"] = users
        async with self.gate:
            try:
                if self.control is not None:
                    for body in bodies:
                        await self.control.send(json.dumps(body))
                elif self.http is not None:
                    if self.batch == 1:
                        path, payload = "/api/v1/push", json.dumps(bodies[0])
                    else:
                        path, payload = "/api/v1/push/batch", json.dumps({"pushes": bodies})
                    status, _ = await asyncio.wait_for(
                        self.http.post(path, payload.encode()), 30)
                    if status != 202:
                        self.errors += self.batch
                        return
                self.sent += self.batch
            except Exception:
                self.errors += self.batch

    async def run(self, *, rate: float, duration_s: float, users_of: Any) -> float:
        """Offer ``rate`` pushes/s for ``duration_s``; returns the achieved rate."""
        requests_per_s = rate / self.batch
        started = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while (now := time.perf_counter()) - started < duration_s:
            due = started + i / requests_per_s
            if due > now:
                await asyncio.sleep(due - now)
            task = asyncio.create_task(self.push(users_of(i)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)
        return self.sent / (time.perf_counter() - started)

    async def close(self) -> None:
        if self.http:
            await self.http.aclose()


async def fanout(*, server: str, clients: int, rate: float, duration_s: float, batch: int,
                 broadcast: bool, env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Connect ``clients`` users, push at ``rate``, measure deliveries and latency."""
    # Users of this run only: pushes a previous run left on a shared broker (RocketMQ keeps
    # its topic between runs) reach nobody here instead of counting as extra deliveries.
    run_id = f"{os.getpid()}-{time.monotonic_ns() % 10**6}"
    users = [f"{run_id}-u{i}" for i in range(clients)]
    stats = Stats()
    with server_under_test(server, env, workdir) as target:
        ws_url, pid = target.ws_url, target.pid
        if target.gw is None:
            control = await websockets.connect(
                f"ws://127.0.0.1:{target.port}/control", compression=None)
            pusher = Pusher(control=control, batch=batch)
        else:
            control = None
            pusher = Pusher(gw=target.gw, batch=batch)
        meter = ProcessMeter(pid)
        conns, connect = await connect_many([f"{ws_url}?token={token(u)}" for u in users], stats)
        rss_before = meter.rss_kb()
        cpu_before, t0 = meter.cpu_s(), time.perf_counter()
        users_of = (lambda i: None) if broadcast else (lambda i: [random.choice(users)])
        achieved = await pusher.run(rate=rate, duration_s=duration_s, users_of=users_of)
        expected = pusher.sent * (len(conns) if broadcast else 1)
        drain_s = await wait_received(stats, expected, timeout_s=max(10.0, duration_s))
        elapsed = time.perf_counter() - t0
        cpu = (meter.cpu_s() - cpu_before) / elapsed
        result = {
            "server": server, "clients": clients, "connect": connect,
            **({} if server == "baseline" else {"gateway_server": GATEWAY_SERVER["name"]}),
            "offered_push_rate": rate, "achieved_push_rate": round(achieved, 1),
            "push_errors": pusher.errors,
            # Over the time actually taken: an overloaded pusher runs past ``duration_s``.
            "deliveries_per_s": round(stats.received / elapsed, 1),
            "elapsed_s": round(elapsed, 2),
            "expected": expected, "loss": expected - stats.received, "drain_s": round(drain_s, 2),
            **stats.summary(),
            "server_rss_mb": round(meter.rss_kb() / 1024, 1),
            "server_rss_delta_mb": round((meter.rss_kb() - rss_before) / 1024, 1),
            "server_cpu_pct": round(cpu * 100, 1),
            # Server CPU per delivered frame: comparable even when the load client saturates.
            "server_cpu_us_per_delivery": round(cpu * elapsed / max(1, stats.received) * 1e6, 2),
        }
        await pusher.close()
        if control is not None:
            await control.close()
        await asyncio.gather(*(c.close() for c in conns))
    return result


async def idle(*, clients: int, duration_s: float, ping_every_s: float, env: dict[str, str],
               workdir: Path, server: str = "gateway") -> dict[str, Any]:
    """Hold ``clients`` connections heartbeating every ``ping_every_s``; memory and CPU.

    ``server="baseline"`` holds them on the bare ``websockets`` server instead, which
    answers the same heartbeat: the floor the gateway's figures are compared with.
    """
    stats = Stats()
    with server_under_test(server, env, workdir) as target:
        ws_url = target.ws_url
        meter = ProcessMeter(target.pid)
        rss_empty = meter.rss_kb()
        urls = [f"{ws_url}?token={token(f'u{i}')}" for i in range(clients)]
        conns, connect = await connect_many(urls, stats, ping_every_s=ping_every_s,
                                            concurrency=500)
        await asyncio.sleep(1)
        cpu_before, t0 = meter.cpu_s(), time.perf_counter()
        await asyncio.sleep(duration_s)
        cpu = (meter.cpu_s() - cpu_before) / (time.perf_counter() - t0)
        rss_full = meter.rss_kb()
        alive = sum(1 for c in conns if c.close_code is None)
        await asyncio.gather(*(c.close() for c in conns))
    return {
        "server": server,
        **({} if server == "baseline" else {"gateway_server": GATEWAY_SERVER["name"]}),
        "clients": clients, "connect": connect, "alive_at_end": alive,
        "ping_every_s": ping_every_s,
        "server_rss_mb": round(rss_full / 1024, 1),
        "kb_per_connection": round((rss_full - rss_empty) / max(1, len(conns)), 2),
        "server_cpu_pct": round(cpu * 100, 2),
        "loss": clients - alive, "closes": stats.summary()["closes"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("scenario", choices=["broadcast", "targeted", "idle", "rocketmq",
                                             "baseline", "all", "apps"])
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None, help="pushes per second offered")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--ping-every", type=float, default=25.0)
    parser.add_argument("--targeted-clients", type=int, default=2000,
                        help="apps: clients of the targeted part (--clients: the broadcast part)")
    parser.add_argument("--targeted-rate", type=float, default=1000,
                        help="apps: single pushes/s of the targeted part")
    parser.add_argument("--rounds", type=int, default=2,
                        help="apps: measurements of each side, alternating which goes first")
    parser.add_argument("--kinds", default="broadcast,targeted",
                        help="apps: which parts, of broadcast, targeted, multicast")
    parser.add_argument("--control", action="store_true",
                        help="apps: also broadcast twice the pushes to half the clients in one "
                             "app, to tell the apps' cost from the pushes' (bench/apps.py)")
    parser.add_argument("--rocketmq-endpoint", default="127.0.0.1:8081")
    parser.add_argument("--server", choices=["daphne", "uvicorn", "baseline"],
                        default="daphne",
                        help="rungateway --server for the gateway; for idle also baseline "
                             "(the bare websockets server)")
    parser.add_argument("--workers", type=int, default=1,
                        help="rungateway --workers (N > 1 needs --env GATEWAY_BROKER=redis or "
                             "rocketmq); CPU and RSS are summed over the workers")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the gateway (repeatable)")
    args = parser.parse_args(argv)
    if args.server == "baseline" and args.scenario != "idle":
        parser.error("--server baseline is for idle; the baseline scenario is the broadcast one")
    GATEWAY_SERVER["name"] = args.server
    if args.server != "baseline":
        GATEWAY_ARGS.extend(["--server", args.server])
    if args.workers > 1:
        GATEWAY_ARGS.extend(["--workers", str(args.workers)])
    GATEWAY_ENV.update(item.split("=", 1) for item in args.env)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    results: list[dict[str, Any]] = []

    def emit(name: str, result: dict[str, Any]) -> None:
        result = {"scenario": name, **result}
        results.append(result)
        print(json.dumps(result), flush=True)

    s = args.scenario
    if s in ("broadcast", "baseline", "all"):
        clients, rate = args.clients or 1000, args.rate or 50
        if s in ("baseline", "all"):
            emit("baseline", asyncio.run(fanout(
                server="baseline", clients=clients, rate=rate, duration_s=args.duration,
                batch=1, broadcast=True, env={}, workdir=workdir)))
        if s in ("broadcast", "all"):
            emit("broadcast", asyncio.run(fanout(
                server="gateway", clients=clients, rate=rate, duration_s=args.duration,
                batch=args.batch, broadcast=True, env={}, workdir=workdir)))
        if s == "all":
            base, gw = results[0], results[1]
            print(json.dumps({"scenario": "ratio", "broadcast_deliveries_vs_baseline": round(
                gw["deliveries_per_s"] / max(1.0, base["deliveries_per_s"]), 3)}), flush=True)
    elif s in ("targeted", "rocketmq"):
        env = {}
        if s == "rocketmq":
            env = {"GATEWAY_BROKER": "rocketmq",
                   "GATEWAY_ROCKETMQ_ENDPOINT": args.rocketmq_endpoint}
        emit(s, asyncio.run(fanout(
            server="gateway", clients=args.clients or (1000 if s == "rocketmq" else 10000),
            rate=args.rate or (2000 if s == "rocketmq" else 1500), duration_s=args.duration,
            batch=args.batch, broadcast=False, env=env, workdir=workdir)))
    elif s == "idle":
        emit("idle", asyncio.run(idle(
            clients=args.clients or 19000, duration_s=args.duration, ping_every_s=args.ping_every,
            env={"GATEWAY_MAX_CONNECTIONS_PER_USER": "5"}, workdir=workdir,
            server="baseline" if args.server == "baseline" else "gateway")))
    elif s == "apps":
        # Imported here: bench.apps builds on this module (Pusher, token, ProcessMeter).
        from bench import apps

        with gateway({}, workdir) as gw:
            ratios = asyncio.run(apps.run(
                gw=gw, server=args.server, clients=args.clients or 1000, rate=args.rate or 50,
                targeted_clients=args.targeted_clients, targeted_rate=args.targeted_rate,
                duration_s=args.duration, rounds=args.rounds, control=args.control,
                kinds=args.kinds.split(","), emit=emit))
        for line in ratios:
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
