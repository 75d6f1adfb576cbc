"""Routed against broadcast delivery (issue #16): N nodes on loopback, users spread evenly
over them, targeted pushes; per node, the pushes it read from the broker and its CPU; the
push-to-frame latency; delivered counts and loss. One JSON line per (N, mode).

    python -m bench.routed --nodes 2,4,6 --users 6000 --rate 300 --duration 10 \
        --database-url postgres://postgres@127.0.0.1:5440/postgres \
        --redis-url redis://127.0.0.1:6390/0 [--broker redis|rocketmq] \
        [--rocketmq-endpoint 127.0.0.1:8081] [--out bench/results/routed.jsonl]
    python -m bench.routed --report bench/results/routed.jsonl \
        --chart docs/images/routed-scaling.png     # the Markdown table and the chart

Each (N, mode) gets a fresh PostgreSQL database (created, migrated, dropped), a Redis
stream and presence map of its own (``GATEWAY_ROCKETMQ_TOPIC``, redis broker), and new node
ids; every node it starts is stopped at the end. Pushes are sent through every node's API
in turn, one user each, so that each node relays its share.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from bench.loadgen import HttpPool, Stats, connect_many, wait_received
from bench.run import ProcessMeter, token
from tests.support.clients import metric
from tests.support.gateway import GatewayProcess, base_env, manage, start_gateway


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    name = f"bench_routed_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def node_metrics(gw: GatewayProcess) -> str:
    import httpx

    with httpx.Client(trust_env=False, timeout=10) as http:
        return http.get(f"{gw.url}/metrics").text


def read_counts(gw: GatewayProcess) -> dict[str, float]:
    text = node_metrics(gw)
    return {
        "read": metric(text, "gateway_messages_consumed_total", node=gw.node_id, kind="push"),
        "not_held": metric(text, "gateway_messages_skipped_total", node=gw.node_id,
                           reason="no_local_session"),
        "fallback": metric(text, "gateway_routing_total", node=gw.node_id, how="fallback"),
    }


async def run_one(*, nodes: int, mode: str, users: int, rate: float, duration_s: float,
                  env: dict[str, str], admin_url: str, workdir: Path) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:6]
    with fresh_database(admin_url) as database:
        cluster_env = {**env, "DATABASE_URL": database, "GATEWAY_ROUTING": mode,
                       "GATEWAY_ROCKETMQ_TOPIC": env.get("GATEWAY_ROCKETMQ_TOPIC")
                       or f"bench-{run_id}",
                       "GATEWAY_API_RATE_PER_SECOND": "0", "GATEWAY_LOG_LEVEL": "WARNING",
                       "GATEWAY_RECORD_INTERVAL": "1"}
        manage(base_env(workdir / f"migrate-{run_id}", "migrate", cluster_env),
               "migrate", "--no-input", "-v", "0", timeout=180)
        key = manage(base_env(workdir / f"key-{run_id}", "key", cluster_env),
                     "createapikey", f"bench-{run_id}").strip()
        gws = [start_gateway(workdir, node_id=f"r{i}-{run_id}", env=cluster_env,
                             migrate=False, wait=False) for i in range(nodes)]
        try:
            for gw in gws:
                gw.wait_ready(timeout_s=90)
                gw.wait_readyz(timeout_s=90)
            return await measure(gws, key=key, mode=mode, users=users, rate=rate,
                                 duration_s=duration_s, run_id=run_id)
        finally:
            for gw in gws:
                gw.stop()


async def measure(gws: list[GatewayProcess], *, key: str, mode: str, users: int, rate: float,
                  duration_s: float, run_id: str) -> dict[str, Any]:
    n = len(gws)
    names = [f"{run_id}-u{i}" for i in range(users)]
    stats = Stats()
    urls = [f"{gws[i % n].ws_url}?token={token(u)}" for i, u in enumerate(names)]
    conns, connect = await connect_many(urls, stats, concurrency=300)
    await asyncio.sleep(2.5)  # every session in the map, every node's marker renewed
    meters = [ProcessMeter(gw.proc.pid) for gw in gws if gw.proc is not None]
    before = [read_counts(gw) for gw in gws]
    cpu_before = [m.cpu_s() for m in meters]
    pools = [HttpPool(gw.host, gw.port, size=16, headers={"Authorization": f"Token {key}"})
             for gw in gws]
    sent = errors = 0
    rng = random.Random(16)
    started = time.perf_counter()
    tasks: set[asyncio.Task[None]] = set()

    async def push(i: int) -> None:
        nonlocal sent, errors
        body = json.dumps({"users": [rng.choice(names)], "data": {"t": time.time()}})
        try:
            status, _ = await asyncio.wait_for(
                pools[i % n].post("/api/v1/push", body.encode()), 30)
        except Exception:
            errors += 1
            return
        if status == 202:
            sent += 1
        else:
            errors += 1

    i = 0
    while (now := time.perf_counter()) - started < duration_s:
        due = started + i / rate
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.create_task(push(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    await asyncio.gather(*tasks)
    drain_s = await wait_received(stats, sent, timeout_s=30)
    await asyncio.sleep(1.0)  # the last reads counted on every node
    elapsed = time.perf_counter() - started
    after = [read_counts(gw) for gw in gws]
    cpu = [(m.cpu_s() - c) / elapsed * 100 for m, c in zip(meters, cpu_before, strict=True)]
    for pool in pools:
        await pool.aclose()
    await asyncio.gather(*(c.close() for c in conns))
    read = [a["read"] - b["read"] for a, b in zip(after, before, strict=True)]
    not_held = [a["not_held"] - b["not_held"] for a, b in zip(after, before, strict=True)]
    fallback = sum(a["fallback"] - b["fallback"] for a, b in zip(after, before, strict=True))
    return {
        "scenario": "routed", "nodes": n, "mode": mode, "users": users,
        "connect": connect, "offered_push_rate": rate, "pushes_sent": sent,
        "push_errors": errors, "delivered": stats.received, "loss": sent - stats.received,
        "drain_s": round(drain_s, 2),
        "read_per_node": [int(r) for r in read],
        "max_read_share": round(max(read) / max(1, sent), 3),
        "not_held_per_node": [int(r) for r in not_held],
        "fallback_rounds": int(fallback),
        "cpu_pct_per_node": [round(c, 1) for c in cpu],
        "cpu_pct_mean": round(sum(cpu) / n, 1),
        **{k: v for k, v in stats.summary().items() if k == "latency_ms"},
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of docs/performance.md, one line per (broker, N, mode)."""
    lines = [
        "| broker | N | mode | pushes | delivered | loss | read per node (max share) "
        "| not held per node | CPU % per node (mean) | latency p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['broker']} | {r['nodes']} | {r['mode']} | {r['pushes_sent']} "
            f"| {r['delivered']} | {r['loss']} "
            f"| {', '.join(map(str, r['read_per_node']))} ({r['max_read_share']:.2f}) "
            f"| {', '.join(map(str, r['not_held_per_node']))} "
            f"| {', '.join(map(str, r['cpu_pct_per_node']))} ({r['cpu_pct_mean']}) "
            f"| {lat['p50']} / {lat['p99']} |")
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], path: str) -> None:
    """Share of the cluster's pushes the busiest node read, and mean CPU per node, against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    brokers = sorted({r["broker"] for r in rows})
    for broker in brokers:
        for mode, style in (("broadcast", "o-"), ("routed", "s-")):
            points = sorted(((r["nodes"], r) for r in rows
                             if r["mode"] == mode and r["broker"] == broker),
                            key=lambda point: point[0])
            if not points:
                continue
            if broker != brokers[0]:
                style = style.replace("-", "--")
            label = f"{broker} {mode}" if len(brokers) > 1 else mode
            ns = [n for n, _ in points]
            left.plot(ns, [r["max_read_share"] for _, r in points], style, label=label)
            right.plot(ns, [r["cpu_pct_mean"] for _, r in points], style, label=label)
    ns = sorted({r["nodes"] for r in rows})
    left.plot(ns, [1.2 / n for n in ns], ":", color="grey", label="target 1.2/N")
    left.set(xlabel="nodes (N)", ylabel="share of the targeted pushes read",
             title="Busiest node's broker reads", ylim=(0, 1.1), xticks=ns)
    right.set(xlabel="nodes (N)", ylabel="CPU % of one core", title="Mean CPU per node",
              xticks=ns)
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.routed")
    parser.add_argument("--report", default="", help="a JSON-lines file of earlier runs: print "
                        "its table (and with --chart, draw it) instead of running")
    parser.add_argument("--chart", default="")
    parser.add_argument("--nodes", default="2,4,6")
    parser.add_argument("--modes", default="broadcast,routed")
    parser.add_argument("--users", type=int, default=6000)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--broker", choices=["redis", "rocketmq"], default="redis")
    parser.add_argument("--rocketmq-endpoint", default="127.0.0.1:8081")
    parser.add_argument("--database-url", default="",
                        help="a PostgreSQL server's admin URL; a database per run is made")
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--out", default="", help="append each JSON line to this file too")
    args = parser.parse_args(argv)
    if args.report:
        rows = [json.loads(line) for line in Path(args.report).read_text().splitlines()
                if line.strip()]
        print(table(rows))
        if args.chart:
            chart(rows, args.chart)
        return
    # The load client sends no heartbeat: connecting 6,000 users takes about a minute here,
    # so the first ones would pass the default 60 s timeout (4008) during the run.
    env = {"GATEWAY_BROKER": args.broker, "REDIS_URL": args.redis_url,
           "GATEWAY_NODE_TIMEOUT": "10", "GATEWAY_HEARTBEAT_TIMEOUT": "3600"}
    if args.broker == "rocketmq":
        env.update(GATEWAY_ROCKETMQ_ENDPOINT=args.rocketmq_endpoint,
                   GATEWAY_ROCKETMQ_TOPIC="gateway-push")
    if not (args.database_url and args.redis_url):
        parser.error("--database-url and --redis-url are needed to run")
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-routed-"))
    for nodes in (int(x) for x in args.nodes.split(",")):
        for mode in args.modes.split(","):
            result = asyncio.run(run_one(
                nodes=nodes, mode=mode, users=args.users, rate=args.rate,
                duration_s=args.duration, env=env, admin_url=args.database_url,
                workdir=workdir))
            result = {**result, "broker": args.broker, "pid": os.getpid()}
            line = json.dumps(result)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as out:
                    out.write(line + "\n")


if __name__ == "__main__":
    main()
