"""Clusters of real nodes for the cluster suite: several nodes on one broker and one
PostgreSQL, the databases they share, and the RocketMQ script.

Node ids carry a random suffix: a RocketMQ consumer group (``gateway-<node id>``) outlives
the node on the broker. The Redis broker gets a stream of its own per cluster through
``GATEWAY_ROCKETMQ_TOPIC``; the RocketMQ clusters of a pytest-xdist worker get a topic of the
worker's own (``rocketmq_topic``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from tests.support.gateway import (
    REPO,
    GatewayProcess,
    base_env,
    manage,
    start_gateway,
    start_split_node,
)
from tests.support.services import database_url, redis_url, rocketmq_endpoint

#: Nodes stop beating for this long count as dead (sessions vanish from presence).
NODE_TIMEOUT_S = 6
#: Readiness bound for a node: start-up, and the first long-poll of its broker consumer.
READY_S = 60

LIVE: list[GatewayProcess] = []

BROKERS = [
    pytest.param("rocketmq", marks=pytest.mark.rocketmq, id="rocketmq"),
    pytest.param("redis", marks=pytest.mark.redis, id="redis"),
]


def short_id() -> str:
    return uuid.uuid4().hex[:8]


# --- PostgreSQL --------------------------------------------------------------------------

def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def fresh_database(prefix: str = "gw") -> Iterator[str]:
    """A new, migrated PostgreSQL database; dropped (``WITH (FORCE)``) afterwards."""
    admin_url = database_url()
    name = f"{prefix}_{short_id()}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _with_database(admin_url, name)
    try:
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --- Nodes -------------------------------------------------------------------------------

@dataclass
class Cluster:
    """Nodes sharing one database and one broker; ``start`` adds one, ``stop_all`` ends all."""

    broker: str
    workdir: Path
    env: dict[str, str]
    run_id: str = field(default_factory=short_id)
    nodes: dict[str, GatewayProcess] = field(default_factory=dict)
    _api_key: str | None = None

    def node_id(self, name: str) -> str:
        return f"{name}-{self.broker[:3]}-{self.run_id}"

    def start(self, name: str, *, split: bool = False, ready: bool = True,
              **env: str) -> GatewayProcess:
        """Node ``name``: ``rungateway`` or, with ``split``, daphne + ``runconsumer``."""
        return self.start_many([name], split=split, ready=ready, **env)[name]

    def start_many(self, names: list[str], *, split: bool = False, ready: bool = True,
                   **env: str) -> dict[str, GatewayProcess]:
        """Start several nodes side by side; each answers ``/healthz`` (and ``/readyz``
        with ``ready``) when this returns."""
        started: dict[str, GatewayProcess] = {}
        for name in names:
            node_env = {**self.env, **env}
            if split:
                gw = start_split_node(self.workdir, node_id=self.node_id(name), env=node_env,
                                      wait=False)
            else:
                gw = start_gateway(self.workdir, node_id=self.node_id(name), env=node_env,
                                   migrate=False, wait=False)
            self.nodes[name] = started[name] = gw
            LIVE.append(gw)
        for gw in started.values():
            gw.wait_ready(timeout_s=READY_S)
        if ready:
            for gw in started.values():
                gw.wait_readyz(timeout_s=READY_S)
        return started

    def stop(self, name: str, sig: int | None = None) -> int | None:
        gw = self.nodes.pop(name)
        try:
            return gw.stop() if sig is None else gw.stop(sig)
        finally:
            if gw in LIVE:
                LIVE.remove(gw)
            with contextlib.suppress(Exception):
                _delete_channel_layer_keys(gw)

    def stop_all(self) -> None:
        for name in list(self.nodes):
            with contextlib.suppress(Exception):
                self.stop(name)

    def manage(self, *args: str) -> str:
        """``manage.py`` on the cluster's database; its stdout."""
        return manage(base_env(self.workdir, "keys", self.env), *args)

    def api_key(self) -> str:
        """One API key for the cluster (the database is shared, so it works on every node)."""
        if self._api_key is None:
            env = base_env(self.workdir, "keys", self.env)
            self._api_key = manage(env, "createapikey", f"cluster-{self.run_id}").strip()
        return self._api_key


def cluster_env(broker: str, database: str, run_id: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": database,
        "GATEWAY_BROKER": broker,
        "GATEWAY_NODE_TIMEOUT": str(NODE_TIMEOUT_S),
        "GATEWAY_RECORD_INTERVAL": "1",
    }
    if broker == "rocketmq":
        # The topic must exist on the broker (mqadmin): the suite's, or this worker's own.
        env["GATEWAY_ROCKETMQ_ENDPOINT"] = rocketmq_endpoint()
        env["GATEWAY_ROCKETMQ_TOPIC"] = rocketmq_topic()
    elif broker == "redis":
        # The topic names the stream key: a stream of this cluster's own.
        env["REDIS_URL"] = redis_url()
        env["GATEWAY_ROCKETMQ_TOPIC"] = f"cluster-{run_id}"
    return env


def stream_key(cluster: Cluster) -> str:
    return f"gateway:{cluster.env['GATEWAY_ROCKETMQ_TOPIC']}:stream"


def _delete_channel_layer_keys(gw: GatewayProcess) -> None:
    """What the node's Redis channel layer leaves (its group lives a day)."""
    if not gw.env.get("REDIS_URL"):
        return
    import redis

    client = redis.Redis.from_url(gw.env["REDIS_URL"], socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"gateway:{gw.node_id}:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def delete_stream(cluster: Cluster) -> None:
    if cluster.broker != "redis":
        return
    import redis

    client = redis.Redis.from_url(cluster.env["REDIS_URL"], socket_timeout=5)
    try:
        client.delete(stream_key(cluster))
    finally:
        client.close()


# --- RocketMQ ----------------------------------------------------------------------------

ROCKETMQ_SH = REPO / "scripts" / "rocketmq.sh"
#: The topic ``scripts/rocketmq.sh start`` creates (its default ``GATEWAY_ROCKETMQ_TOPIC``).
SUITE_TOPIC = "gateway-push"


def rocketmq_script(command: str, timeout_s: float = 180,
                    *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROCKETMQ_SH), command, *args], cwd=REPO, capture_output=True, text=True,
        timeout=timeout_s, check=False,
    )


@functools.cache
def rocketmq_topic() -> str:
    """The topic of this process's RocketMQ clusters. A plain run uses the suite's. Under
    pytest-xdist each worker has one of its own, created on first use: on a shared topic a
    cluster of another worker would read this worker's broadcasts (and count them in its
    metrics), and a routed cluster's presence map is named after its topic. The serial
    tests, which restart RocketMQ (and so lose every topic but the suite's), never run
    under xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker:
        return SUITE_TOPIC
    topic = f"{SUITE_TOPIC}-{worker}"
    created = rocketmq_script("create-topic", 120, topic)
    if created.returncode != 0:
        raise RuntimeError(f"could not create RocketMQ topic {topic}:\n{created.stderr}")
    return topic


def rocketmq_running() -> bool:
    return rocketmq_script("status", timeout_s=30).returncode == 0


def wait_until(check: Callable[[], bool], *, within: float, what: str,
               interval: float = 0.2) -> None:
    """Poll a blocking ``check`` until it holds; fails naming ``what``."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(interval)
