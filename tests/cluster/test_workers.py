"""``rungateway --workers 2`` (gateway_node/workers.py): two worker processes on one port,
each a node of the cluster (``<node id>-w1``, ``-w2``), on the Redis broker and a fresh
PostgreSQL database that only the supervisor migrates (the workers run ``--no-migrate``),
under each server (``--server daphne``, ``uvicorn``).

The supervisor runs for the whole module (per server); the tests run in file order, the
last one stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection

from tests.cluster import flows
from tests.support import cluster as cluster_support
from tests.support.clients import (
    Api,
    eventually,
    make_token,
    metric,
    metrics_text,
    recv_json,
    recv_push,
    uid,
    wait_closed,
    ws_connect,
)
from tests.support.cluster import READY_S, cluster_env, fresh_database, short_id
from tests.support.gateway import GatewayProcess, base_env, manage, start_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

WORKERS = 2
#: Clients per test: with SO_REUSEPORT each lands on a worker by a hash of its source port,
#: so 24 of them miss a worker with probability 2 * 2**-24.
CLIENTS = 24
READY_LINE = f"gateway supervisor: {WORKERS} workers listening on"


def worker_ids(gw: GatewayProcess) -> set[str]:
    return {f"{gw.node_id}-w{i}" for i in range(1, WORKERS + 1)}


def worker_pids(gw: GatewayProcess) -> list[int]:
    assert gw.proc is not None
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(gw.proc.pid)], capture_output=True,
                         text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


def alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def _cleanup_redis(url: str, gw: GatewayProcess) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.delete(f"gateway:{gw.env['GATEWAY_ROCKETMQ_TOPIC']}:stream")
        keys = list(client.scan_iter(match=f"gateway:{gw.node_id}-w*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def supervisor(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """``rungateway --workers 2`` on a fresh, unmigrated database, all workers serving."""
    from gateway_node.servers import SERVERS

    if request.param not in SERVERS:
        pytest.skip(f"no --server {request.param}")
    with fresh_database("gwk") as url:
        run_id = short_id()
        env = cluster_env("redis", url, run_id)
        gw = start_gateway(tmp_path_factory.mktemp("workers"), node_id=f"wk-{run_id}", env=env,
                           args=["--workers", str(WORKERS), "--server", request.param],
                           wait=False)
        cluster_support.LIVE.append(gw)
        try:
            deadline = time.monotonic() + READY_S
            while READY_LINE not in gw.log():
                gw._check_alive()
                assert time.monotonic() < deadline, f"workers not serving within {READY_S} s"
                time.sleep(0.2)
            yield gw
        finally:
            gw.stop()
            cluster_support.LIVE.remove(gw)
            with contextlib.suppress(Exception):
                _cleanup_redis(env["REDIS_URL"], gw)


@pytest.fixture(scope="module")
def key(supervisor: GatewayProcess) -> str:
    env = base_env(Path(supervisor.env["GATEWAY_DATA_DIR"]), "keys", {
        "DATABASE_URL": supervisor.env["DATABASE_URL"]})
    return manage(env, "createapikey", f"workers-{short_id()}").strip()


async def connect_spread(gw: GatewayProcess, count: int = CLIENTS,
                         ) -> list[tuple[str, ClientConnection, str]]:
    """``count`` clients of their own users on the shared port: ``(user, ws, node)``; every
    worker holds at least one."""
    clients: list[tuple[str, ClientConnection, str]] = []
    try:
        for _ in range(count):
            user = uid("wk")
            ws = await ws_connect(gw, make_token(user))
            clients.append((user, ws, ""))
            welcome = await recv_json(ws)
            assert welcome["type"] == "welcome" and welcome["user"] == user, welcome
            clients[-1] = (user, ws, welcome["node"])
    except BaseException:
        await close_all(clients)
        raise
    nodes = {node for _, _, node in clients}
    assert nodes == worker_ids(gw), f"clients landed on {nodes}"
    return clients


async def close_all(clients: list[tuple[str, ClientConnection, str]]) -> None:
    for _, ws, _ in clients:
        with contextlib.suppress(Exception):
            await ws.close()


async def wait_consuming(api: Api, clients: list[tuple[str, ClientConnection, str]]) -> None:
    """Until a push reaches one client on each worker (each worker's broker cursor is set):
    probe pushes until one arrives, then read the extra copies away."""
    for node in sorted({n for _, _, n in clients}):
        user, ws, _ = next(c for c in clients if c[2] == node)
        deadline = time.monotonic() + 30
        while True:
            probe = await api.push_to([user], {"probe": True})
            try:
                frame = await recv_push(ws, within=1.0)
            except AssertionError:
                assert time.monotonic() < deadline, f"{node} consumes nothing"
                continue
            if frame["id"] == probe:
                break
    for _, ws, _ in clients:  # late probe copies
        with contextlib.suppress(AssertionError):
            while True:
                await recv_push(ws, within=0.3)


async def test_clients_on_one_port_land_on_every_worker(supervisor: GatewayProcess,
                                                         key: str) -> None:
    assert len(worker_pids(supervisor)) == WORKERS
    clients = await connect_spread(supervisor)
    try:
        # Each worker is a node of the cluster: presence asked on any of them sees users on
        # both, with the worker's node id.
        async with Api(supervisor, key) as api:
            for user, _, node in clients[:6]:
                presence = await eventually(
                    lambda user=user: api.presence(user), lambda p: p["online"],
                    within=flows.DB_S, what=f"{user} online")
                assert [c["node"] for c in presence["connections"]] == [node], presence
        # Whichever worker answers /metrics lists every worker's series (multi-process mode).
        text = await metrics_text(supervisor)
        for node in worker_ids(supervisor):
            assert metric(text, "gateway_processes", node=node, role="all") == 1, text
    finally:
        await close_all(clients)


async def test_push_reaches_users_on_both_workers(supervisor: GatewayProcess, key: str) -> None:
    clients = await connect_spread(supervisor)
    try:
        async with Api(supervisor, key) as api:
            await wait_consuming(api, clients)
            body = flows.data("both workers")
            push_id = await api.push_to([user for user, _, _ in clients], body)
            for _, ws, node in clients:
                frame = await recv_push(ws, within=flows.CROSS_S)
                assert frame["id"] == push_id and frame["data"] == body, (node, frame)
            await flows.wait_push_totals(api, push_id, delivered=len(clients))
    finally:
        await close_all(clients)


async def test_broadcast_reaches_every_client_exactly_once(supervisor: GatewayProcess,
                                                           key: str) -> None:
    clients = await connect_spread(supervisor)
    try:
        async with Api(supervisor, key) as api:
            await wait_consuming(api, clients)
            response = await api.push({"broadcast": True, "data": flows.data("all")})
            broadcast = response.json()["id"]
            for _, ws, node in clients:
                frame = await recv_push(ws, within=flows.CROSS_S)
                assert frame["id"] == broadcast, (node, frame)
            # Once: the next frame of every client is a push sent after the broadcast.
            follow_up = await api.push_to([user for user, _, _ in clients], flows.data("after"))
            for _, ws, node in clients:
                frame = await recv_push(ws, within=flows.CROSS_S)
                assert frame["id"] == follow_up, (node, frame)
            await flows.wait_push_totals(api, broadcast, delivered=len(clients))
    finally:
        await close_all(clients)


async def test_sigterm_drains_every_worker_and_exits_0(supervisor: GatewayProcess) -> None:
    """Last: stops the supervisor. Every client, on either worker, gets 4012; the
    supervisor exits 0 and leaves no worker behind."""
    pids = worker_pids(supervisor)
    clients = await connect_spread(supervisor)
    try:
        assert supervisor.proc is not None
        supervisor.proc.send_signal(signal.SIGTERM)
        closes = await asyncio.gather(*(wait_closed(ws, within=20) for _, ws, _ in clients))
        assert [code for code, _ in closes] == [4012] * len(clients), closes
        assert await asyncio.to_thread(supervisor.proc.wait, 30) == 0
    finally:
        await close_all(clients)
    assert not alive(pids), f"workers {alive(pids)} outlived the supervisor"
    assert "stopping 2 worker(s) (SIGTERM)" in supervisor.log()


def test_workers_refuse_the_local_broker(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, node_id="wk-local", args=["--workers", "2"], wait=False,
                       env={"GATEWAY_BROKER": "local"})
    try:
        assert gw.proc is not None
        assert gw.proc.wait(60) == 1
    finally:
        gw.stop()
    log = gw.log()
    assert "GATEWAY_BROKER=local" in log and "GATEWAY_BROKER=redis" in log, log
    assert "listening" not in log, log
