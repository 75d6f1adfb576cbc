"""Fixtures of the monitoring tests; the e2e ones reuse the e2e suite's node fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import pytest_runtest_makereport, start_node  # noqa: F401
from tests.monitoring.support import ThrowawayRedis, WebhookSink


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    server = WebhookSink()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
