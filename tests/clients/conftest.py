"""Fixtures of the client-library suite: one node with the default settings per module, and
an API key on it. The libraries' harness lives in ``tests/support/client_libs.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.client_libs import KINDS
from tests.support.gateway import GatewayProcess, start_live, stop_live


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    node = start_live(tmp_path_factory.mktemp("clients"), "e2e-clients")
    try:
        yield node
    finally:
        stop_live(node)


@pytest.fixture(scope="module")
def key(gw: GatewayProcess) -> str:
    return gw.api_key("clients-e2e")


@pytest.fixture(params=[pytest.param(k, marks=[pytest.mark.browser] if k == "chromium" else [])
                        for k in KINDS])
def kind(request: pytest.FixtureRequest) -> str:
    """Which library drives the scenario: the Python package, gateway.js in Node or in
    Chromium."""
    return str(request.param)
