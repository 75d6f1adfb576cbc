"""Fixtures shared by every suite: this process's node (in-process tests) and dedicated
gateway processes (end-to-end tests). Helpers live in ``tests/support``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway_core.brokers.local import LocalBroker
from gateway_node.node import GatewayNode, set_node
from tests.support.gateway import GatewayProcess, gateway_starter, live_gateways


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayNode]:
    """A fresh node installed as this process's node (fresh rate buckets, ledger, relay);
    no background loops start. No event loop runs its relay either, so what sync code
    submits through the bridge is queued on the spot: it lands in ``node.relay.pending``."""
    installed = GatewayNode(role="all", broker=LocalBroker(node_id="test-node"))
    installed.autostart = False
    monkeypatch.setattr(installed.relay, "submit_threadsafe", installed.relay.submit)
    set_node(installed)
    try:
        yield installed
    finally:
        set_node(None)
        installed._db_executor.shutdown(wait=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``serial`` tests go last: they stop or restart a service the other tests use."""
    items.sort(key=lambda item: item.get_closest_marker("serial") is not None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``serial`` test under pytest-xdist would break the tests of the other workers (and
    their RocketMQ topics, which a restart loses): scripts/test.sh runs them alone."""
    if item.get_closest_marker("serial") and os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.fail("a serial test runs alone: not under pytest-xdist (-n); "
                    "scripts/test.sh runs them after the others", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """A failing test's report carries the tail of every live gateway's log."""
    report = yield
    if report.failed and call.when == "call":
        for gw in live_gateways():
            report.sections.append((f"gateway {gw.node_id} log (tail)", gw.log()[-4000:]))
    return report


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """``start_node(node_id, server="daphne", **env)``: a dedicated gateway process, under
    Daphne or uvicorn (``rungateway --server``), stopped after the test."""
    with gateway_starter(lambda node_id: tmp_path) as start:
        yield start
