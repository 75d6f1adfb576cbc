"""Fixtures of the end-to-end suite: real ``rungateway`` processes, always stopped.

``gateway`` is one node with the default settings, shared by a module;
``start_module_node`` starts nodes with special settings shared by a module. ``start_node``
(dedicated nodes for one test) and the log tails in a failing test's report come from
``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.clients import Api
from tests.support.gateway import GatewayProcess, gateway_starter, start_live, stop_live


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One node with the default settings for the whole module."""
    gw = start_live(tmp_path_factory.mktemp("gateway"), "e2e-main")
    try:
        yield gw
    finally:
        stop_live(gw)


@pytest.fixture(scope="module")
def start_module_node(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., GatewayProcess]]:
    """Like ``start_node``, for a node shared by the tests of one module."""
    with gateway_starter(tmp_path_factory.mktemp) as start:
        yield start


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
