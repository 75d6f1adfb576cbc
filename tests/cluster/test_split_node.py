"""The core cross-node flow with node B split in two processes (PROTOCOL.md section 5):
``daphne gatewaysite.asgi:application`` serves, ``manage.py runconsumer`` consumes the
broker and hands every message to the web process through B's Redis channel layer.
Node A is a whole ``rungateway`` node."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.cluster import flows
from tests.support.clients import Api, recv_json, uid
from tests.support.cluster import BROKERS, Cluster
from tests.support.gateway import GatewayProcess
from tests.support.services import redis_url

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

#: How long runconsumer may take to reach the broker (a new RocketMQ group, a first
#: XREAD) before B is given up on.
CONSUMER_READY_S = 45.0


async def wait_consumer_feeds_web(key: str, publisher: GatewayProcess,
                                  split: GatewayProcess) -> None:
    """Until a push POSTed to ``publisher`` reaches a probe client on ``split``.

    The split node's ``/readyz`` sees its consumer's beat, not whether the consumer's
    group is assigned its queues yet, so readiness is proven end to end: probe pushes go to
    a probe user of their own, so a late copy of one reaches nobody else."""
    probe = uid("probe")
    ws, _ = await flows.connect(split, probe)
    try:
        async with Api(publisher, key) as api:
            deadline = time.monotonic() + CONSUMER_READY_S
            while True:
                await api.push_to([probe], {"probe": True})
                try:
                    frame = await recv_json(ws, within=1.0)
                except AssertionError:
                    if time.monotonic() >= deadline:
                        raise AssertionError(
                            f"runconsumer of {split.node_id} fed nothing to its web process "
                            f"within {CONSUMER_READY_S} s"
                        ) from None
                    continue
                assert frame["type"] == "push", frame
                return
    finally:
        await ws.close()


@pytest.fixture(scope="module", params=BROKERS)
def cluster(request: pytest.FixtureRequest, make_cluster) -> Iterator[Cluster]:
    """A (``rungateway``) and B (daphne + runconsumer, ``REDIS_URL``), both ready."""
    cluster = make_cluster(request.param)
    try:
        cluster.start("a", ready=False)
        cluster.start("b", split=True, ready=False, REDIS_URL=redis_url())
        for gw in cluster.nodes.values():
            gw.wait_readyz()
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def key(cluster: Cluster) -> str:
    key = cluster.api_key()
    asyncio.run(wait_consumer_feeds_web(key, cluster.nodes["a"], cluster.nodes["b"]))
    return key


def test_split_node_runs_as_two_processes(cluster: Cluster) -> None:
    b = cluster.nodes["b"]
    assert len(b.procs) == 2
    assert "daphne" in b.procs[0].args and "runconsumer" in b.procs[1].args
    # /readyz waited for the consumer's beat; its own line follows at once (bounded wait).
    line = "consumer for node " + b.node_id + " started"
    deadline = time.monotonic() + 30
    while line not in b.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert line in b.log()


async def test_push_posted_to_a_reaches_a_client_on_split_b(cluster: Cluster,
                                                            key: str) -> None:
    await flows.push_crosses_nodes(key, cluster.nodes["a"], cluster.nodes["b"])


async def test_push_posted_to_split_b_reaches_a_client_on_a(cluster: Cluster,
                                                            key: str) -> None:
    # B's relay runs in its web process.
    await flows.push_crosses_nodes(key, cluster.nodes["b"], cluster.nodes["a"])


async def test_user_on_a_and_split_b_gets_the_push_on_both(cluster: Cluster,
                                                           key: str) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    await flows.user_on_two_nodes(key, publisher=a, first=a, second=b, asker=a)


async def test_broadcast_reaches_both_nodes_exactly_once(cluster: Cluster, key: str) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    await flows.broadcast_exactly_once(key, b, [a, b])


async def test_disconnect_via_a_closes_the_connections_on_split_b(cluster: Cluster,
                                                                  key: str) -> None:
    await flows.disconnect_crosses_nodes(key, cluster.nodes["a"], cluster.nodes["b"])


def test_runconsumer_exits_0_on_sigterm(cluster: Cluster) -> None:
    consumer = cluster.nodes["b"].procs[1]
    assert consumer.poll() is None, "runconsumer died early"
    started = time.monotonic()
    consumer.send_signal(signal.SIGTERM)
    try:
        code = consumer.wait(15)
    except subprocess.TimeoutExpired:
        raise AssertionError("runconsumer still runs 15 s after SIGTERM") from None
    assert code == 0, code
    assert time.monotonic() - started < 15
    assert "consumer for node " + cluster.nodes["b"].node_id + " stopped" in \
        cluster.nodes["b"].log()


def test_split_node_is_not_ready_without_its_consumer(cluster: Cluster) -> None:
    """Issue #17: with runconsumer stopped, B's /readyz stayed 200 and a client missed a push.
    Runs after the SIGTERM test above, which stopped B's runconsumer."""
    b = cluster.nodes["b"]
    assert b.procs[1].poll() is not None, "runconsumer still runs"
    deadline = time.monotonic() + 10  # the beat expires within BEAT_TTL_S (5 s)
    while True:
        response = httpx.get(f"{b.url}/readyz", timeout=5)
        if response.status_code == 503 or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    assert response.status_code == 503, response.text
    assert "no beat from this node's runconsumer" in response.json()["checks"]["consumer"]
