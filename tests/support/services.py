"""Where the real services of the test suite are, and what to do when one is missing.

``scripts/test.sh`` starts Redis, PostgreSQL and RocketMQ and exports their addresses with
``GATEWAY_TEST_REQUIRE_SERVICES=1``: there a missing service fails the test. A developer
running ``pytest`` alone without them gets a skip that names the variable instead.
"""

from __future__ import annotations

import os

import pytest


def service_url(variable: str) -> str:
    value = os.environ.get(variable, "")
    if value:
        return value
    message = f"{variable} is not set: run the suite through scripts/test.sh"
    if os.environ.get("GATEWAY_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def redis_url() -> str:
    return service_url("GATEWAY_TEST_REDIS_URL")


def database_url() -> str:
    return service_url("GATEWAY_TEST_DATABASE_URL")


def rocketmq_endpoint() -> str:
    return service_url("GATEWAY_TEST_ROCKETMQ_ENDPOINT")
