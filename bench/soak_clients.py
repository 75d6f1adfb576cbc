"""Soak of the Python client library: many ``GatewayClient``s through node restarts with
pushes flowing; counts pushes lost and pushes handed to the application twice. One JSON line.

    python -m bench.soak_clients --clients 1000 --restarts 3 --rate 20 --duration 90

Node ``a`` holds the clients and is drained (SIGTERM, 4012) and started again on the same
port and data ``--restarts`` times; node ``b`` shares the data and accepts the pushes made
while ``a`` is down (kept pushes, PROTOCOL.md section 6: they reach the users on resume).
The two nodes share a SQLite file and, with ``--broker redis`` (the default), a throwaway
``redis-server`` as their broker; with ``--broker local`` each has its own broker, so what b
accepts reaches a's users only as kept pushes loaded by a later (re)start of a.
Every push is targeted (``--users-per-push`` users) with ``ttl`` ``--ttl``. Bounded: pushes
stop after ``--duration``, then the run waits at most ``--drain-timeout`` for the last
deliveries; every process it starts is stopped. Not a unit test: it needs kept pushes and
resume on the server to report zero lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import jwt
from gateway_client import GatewayAPI, GatewayAPIError, GatewayClient, Push

from tests.monitoring.support import ThrowawayRedis
from tests.support.gateway import JWT_SECRET, GatewayProcess, start_gateway


class Fleet:
    """The clients and what their application saw."""

    def __init__(self, url: str, users: list[str]) -> None:
        self.users = users
        self.received: dict[str, list[str]] = defaultdict(list)
        self.seen: dict[str, set[str]] = defaultdict(set)
        self.duplicates = 0
        self.welcomes = 0
        self.clients = [self._client(url, user) for user in users]
        self.tasks: list[asyncio.Task[None]] = []

    def _client(self, url: str, user: str) -> GatewayClient:
        async def get_token() -> str:
            return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, JWT_SECRET,
                              algorithm="HS256")

        client = GatewayClient(url, get_token=get_token, connect_kwargs={"proxy": None})

        @client.on_push
        async def handle(push: Push) -> None:
            if push.id in self.seen[user]:
                self.duplicates += 1
            self.seen[user].add(push.id)
            self.received[user].append(push.id)

        @client.on_welcome
        def welcome(frame: dict[str, Any]) -> None:
            self.welcomes += 1

        return client

    def open_count(self) -> int:
        return sum(1 for c in self.clients if c.state == "open")

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(c.run()) for c in self.clients]

    async def stop(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 30)


async def wait_until(check: Any, timeout_s: float) -> float | None:
    """Seconds until ``check()`` held, or None after ``timeout_s``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    return None


async def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    shared = workdir / "shared"
    shared.mkdir()
    env = {"GATEWAY_DATA_DIR": str(shared), "GATEWAY_MAX_CONNECTIONS_PER_USER": "5",
           "GATEWAY_API_RATE_PER_SECOND": "0"}
    redis: ThrowawayRedis | None = None
    if args.broker == "redis":
        # One broker for both nodes, as in a cluster: a push b accepts reaches a's users.
        redis = ThrowawayRedis(workdir)
        redis.start()
        env.update({"GATEWAY_BROKER": "redis", "REDIS_URL": redis.url})
    a = start_gateway(workdir, node_id="a", env=env)
    nodes: list[GatewayProcess] = [a]
    fleet: Fleet | None = None
    try:
        b = start_gateway(workdir, node_id="b", env=env, migrate=False)
        nodes.append(b)
        key = a.api_key("soak")
        users = [f"soak-{i}" for i in range(args.clients)]
        fleet = Fleet(a.ws_url, users)
        started = time.monotonic()
        await fleet.start()
        connect_s = await wait_until(lambda: fleet.open_count() == len(users), 120)

        expected: dict[str, list[str]] = defaultdict(list)
        accepted_by: dict[str, tuple[str, float]] = {}
        accepted = refused = 0
        a_up = asyncio.Event()
        a_up.set()
        stop_pushing = asyncio.Event()
        rng = random.Random(7)

        async def pusher() -> None:
            nonlocal accepted, refused
            api_a = GatewayAPI(a.url, key=key, timeout_s=10)
            api_b = GatewayAPI(b.url, key=key, timeout_s=10)
            try:
                for _ in range(int(args.duration * args.rate) + 1):  # bounded
                    if stop_pushing.is_set():
                        return
                    targets = rng.sample(users, min(args.users_per_push, len(users)))
                    body = {"users": targets, "data": {"at": time.time()}, "ttl": args.ttl}
                    # b takes the pushes while a is down.
                    answer, by = None, "a" if a_up.is_set() else "b"
                    with contextlib.suppress(httpx.HTTPError, GatewayAPIError):
                        answer = await (api_a if by == "a" else api_b).push(**body)
                    if answer is None:
                        refused += 1
                    else:
                        accepted += 1
                        accepted_by[answer["id"]] = (by, round(time.monotonic() - started, 2))
                        for user in targets:
                            expected[user].append(answer["id"])
                    await asyncio.sleep(1 / args.rate)
            finally:
                await api_a.aclose()
                await api_b.aclose()

        push_task = asyncio.create_task(pusher())
        restarts: list[dict[str, Any]] = []
        for i in range(args.restarts):
            await asyncio.sleep(args.duration / (args.restarts + 1))
            a_up.clear()
            t0 = time.monotonic()
            stopped_at = round(t0 - started, 2)
            # Off the event loop: the clients and the pusher go on meanwhile.
            code = await asyncio.to_thread(a.stop)
            await asyncio.sleep(args.down_s)  # pushes go to b meanwhile
            a = await asyncio.to_thread(start_gateway, workdir, node_id="a", env=env,
                                        port=a.port, migrate=False)
            up_s = time.monotonic() - t0
            nodes.append(a)
            a_up.set()
            back_s = await wait_until(lambda: fleet.open_count() == len(users), 120)
            restarts.append({"n": i + 1, "exit_code": code, "stopped_at_s": stopped_at,
                             "started_at_s": round(t0 - started + up_s, 2),
                             "all_open_after_s": None if back_s is None
                             else round(time.monotonic() - t0, 2)})
        remaining = args.duration - (time.monotonic() - started)
        if remaining > 0:
            await asyncio.sleep(remaining)
        stop_pushing.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(push_task, 30)

        def lost_now() -> int:
            return sum(len(set(ids) - fleet.seen[user]) for user, ids in expected.items())

        drained_s = await wait_until(lambda: lost_now() == 0, args.drain_timeout)
        # What became of a few lost pushes, by the gateway's own per-recipient state.
        lost_sample: list[dict[str, Any]] = []
        async with GatewayAPI(a.url, key=key, timeout_s=10) as api:
            for user, ids in expected.items():
                for push_id in ids:
                    if push_id in fleet.seen[user] or len(lost_sample) >= 10:
                        continue
                    by, at = accepted_by[push_id]
                    state: Any = None
                    with contextlib.suppress(httpx.HTTPError, GatewayAPIError):
                        page = await api.recipients(push_id)
                        state = next((r for r in page["results"] if r["user"] == user), None)
                    lost_sample.append({"user": user, "push": push_id, "accepted_by": by,
                                        "accepted_at_s": at, "recipient": state})
        out_of_order = sum(
            1 for user, ids in expected.items()
            if [p for p in fleet.received[user] if p in set(ids)] != [
                p for p in ids if p in fleet.seen[user]]
        )
        return {
            "scenario": "soak_clients", "clients": args.clients, "broker": args.broker,
            "restarts": restarts,
            "duration_s": args.duration, "connect_s": connect_s,
            "pushes_accepted": accepted, "pushes_refused": refused,
            "deliveries_expected": sum(len(v) for v in expected.values()),
            "delivered_to_app": sum(len(v) for v in fleet.received.values()),
            "lost": lost_now(), "duplicated_to_app": fleet.duplicates,
            "users_out_of_order": out_of_order, "welcomes": fleet.welcomes,
            "drained_s": drained_s, "elapsed_s": round(time.monotonic() - started, 1),
            "lost_by_node": {n: sum(1 for user, ids in expected.items() for p in ids
                                    if p not in fleet.seen[user] and accepted_by[p][0] == n)
                             for n in ("a", "b")},
            "lost_sample": lost_sample,
        }
    finally:
        if fleet is not None:
            await fleet.stop()
        for node in nodes:
            node.stop()
        if redis is not None:
            redis.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--rate", type=float, default=20, help="pushes per second")
    parser.add_argument("--users-per-push", type=int, default=10)
    parser.add_argument("--ttl", type=int, default=600)
    parser.add_argument("--duration", type=float, default=90, help="seconds of pushing")
    parser.add_argument("--down-s", type=float, default=2, help="seconds a is down per restart")
    parser.add_argument("--drain-timeout", type=float, default=60)
    parser.add_argument("--broker", choices=("redis", "local"), default="redis",
                        help="redis: both nodes on one throwaway redis-server (a cluster); "
                        "local: each node its own broker")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-clients-") as tmp:
        result = asyncio.run(soak(args, Path(tmp)))
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
