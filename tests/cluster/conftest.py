"""Fixtures of the cluster suite: several real nodes on one broker and one PostgreSQL.

Each test module gets a fresh PostgreSQL database (created here, migrated once, dropped with
``FORCE`` at the end) and starts its nodes with ``--no-migrate``. Node ids carry a random
suffix: a RocketMQ consumer group (``gateway-<node id>``) outlives the node on the broker.
The Redis broker gets a stream of its own per cluster through ``GATEWAY_ROCKETMQ_TOPIC``, and
the RocketMQ clusters of each pytest-xdist worker a topic of the worker's own. The tests that
stop or restart the shared RocketMQ or Redis are marked ``serial``: they run last, never
beside another test.
Every process started here is stopped by the fixture that started it, even on failure, and
a failing test's report carries the tail of every live node's log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from tests.support.cluster import (
    LIVE,
    Cluster,
    cluster_env,
    delete_stream,
    fresh_database,
    rocketmq_running,
    rocketmq_script,
    short_id,
)
from tests.support.gateway import base_env, manage


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.failed and call.when in ("setup", "call"):
        for gw in LIVE:
            report.sections.append((f"node {gw.node_id} log (tail)", gw.log()[-6000:]))
    return report


@pytest.fixture(scope="module")
def cluster_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The module's PostgreSQL database, migrated once; its ``DATABASE_URL``."""
    with fresh_database() as url:
        env = base_env(tmp_path_factory.mktemp("migrate"), "migrate", {"DATABASE_URL": url})
        manage(env, "migrate", "--no-input", "-v", "0", timeout=120)
        yield url


@pytest.fixture(scope="module")
def make_cluster(
    cluster_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(broker, **env)``: an empty cluster on the module's database; its nodes
    are stopped (and a Redis stream deleted) at the end of the module."""
    clusters: list[Cluster] = []

    def make(broker: str, **env: str) -> Cluster:
        run_id = short_id()
        cluster = Cluster(
            broker=broker, workdir=tmp_path_factory.mktemp(f"cluster-{broker}"),
            env={**cluster_env(broker, cluster_database, run_id), **env}, run_id=run_id,
        )
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop_all()
            with contextlib.suppress(Exception):
                delete_stream(cluster)


@pytest.fixture
def rocketmq_restored() -> Iterator[None]:
    """For a test that stops RocketMQ: it runs again afterwards, whatever the test did."""
    yield
    if not rocketmq_running():
        started = rocketmq_script("start")
        assert started.returncode == 0, f"RocketMQ did not start again:\n{started.stderr}"
