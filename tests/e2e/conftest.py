"""Fixtures of the end-to-end suite: real ``rungateway`` processes, always stopped.

``gateway`` is one node with the default settings, shared by a module; ``start_node``
starts dedicated short-lived nodes with special settings for one test, under Daphne or,
with ``server="uvicorn"``, under uvicorn (``rungateway --server``). A failing test's
report carries the tail of every live node's log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.clients import Api
from tests.support.gateway import GatewayProcess, start_gateway

_LIVE: list[GatewayProcess] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.failed and call.when == "call":
        for gw in _LIVE:
            report.sections.append((f"gateway {gw.node_id} log (tail)", gw.log()[-4000:]))
    return report


#: ``rungateway --server`` choices, for tests that must hold under each server.
SERVERS = ("daphne", "uvicorn")


def _start(workdir: Path, node_id: str, env: dict[str, str] | None = None,
           server: str = "daphne") -> GatewayProcess:
    gw = start_gateway(workdir, node_id=node_id, env=env, args=("--server", server))
    _LIVE.append(gw)
    return gw


def _stop(gw: GatewayProcess) -> None:
    try:
        gw.stop()
    finally:
        if gw in _LIVE:
            _LIVE.remove(gw)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One node with the default settings for the whole module."""
    gw = _start(tmp_path_factory.mktemp("gateway"), "e2e-main")
    try:
        yield gw
    finally:
        _stop(gw)


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """``start_node(node_id, server="daphne", **env)``: a dedicated node, stopped after the
    test."""
    started: list[GatewayProcess] = []

    def start(node_id: str, server: str = "daphne", **env: str) -> GatewayProcess:
        gw = _start(tmp_path, node_id, env, server)
        started.append(gw)
        return gw

    try:
        yield start
    finally:
        for gw in started:
            _stop(gw)


@pytest.fixture(scope="module")
def start_module_node(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., GatewayProcess]]:
    """Like ``start_node``, for a node shared by the tests of one module."""
    started: list[GatewayProcess] = []

    def start(node_id: str, **env: str) -> GatewayProcess:
        gw = _start(tmp_path_factory.mktemp(node_id), node_id, env)
        started.append(gw)
        return gw

    try:
        yield start
    finally:
        for gw in started:
            _stop(gw)


@pytest.fixture(scope="module")
def api_key(gateway: GatewayProcess) -> str:
    return gateway.api_key("e2e-client-a")


@pytest.fixture(scope="module")
def other_key(gateway: GatewayProcess) -> str:
    return gateway.api_key("e2e-client-b")


@pytest.fixture
async def api(gateway: GatewayProcess, api_key: str):
    async with Api(gateway, api_key) as client:
        yield client


@pytest.fixture
async def other_api(gateway: GatewayProcess, other_key: str):
    async with Api(gateway, other_key) as client:
        yield client


@pytest.fixture
async def anon(gateway: GatewayProcess):
    """The API without a key (and the ops endpoints)."""
    async with Api(gateway, None) as client:
        yield client
