"""schemathesis against the schema a real node serves: generated requests to every operation,
valid ones and invalid ones, must get no 5xx and answers that conform to the schema (status,
content type, body, headers). Bounded: a few dozen examples per operation, seconds in all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from schemathesis import GenerationMode

from tests.support.gateway import GatewayProcess, start_gateway
from webhooks.addresses import AddressRefused, parse

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fuzzed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # The failed-authentication budget is off: schemathesis sends bad keys on purpose
    # (to check that auth is enforced), and the budget would then answer its valid
    # requests 429 (documented, but it would test less). Its own tests are in tests/unit.
    # Private webhook addresses are allowed: a generated URL is then judged by its form
    # alone, not by what its host name resolves to today.
    gw = start_gateway(Path(tmp_path_factory.mktemp("fuzz")), node_id="fuzz",
                       env={"GATEWAY_API_AUTH_FAILURES_PER_MINUTE": "0",
                            "GATEWAY_WEBHOOK_ALLOW_PRIVATE": "1"})
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def api_key(fuzzed_node: GatewayProcess) -> str:
    return fuzzed_node.api_key("fuzz")


@pytest.fixture(scope="module")
def served_schema(fuzzed_node: GatewayProcess) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzzed_node.url}/api/schema/?format=json")


def within_unstated_limits(body: object) -> bool:
    """Whether a body keeps the limits that the schema can state only in its descriptions:
    bytes once serialised (413; 400 for a token's meta), and no NUL in a token's meta
    (kept in a JSON column). Valid-looking data past them is rightly refused."""
    if not isinstance(body, dict):
        return True
    if "url" in body and "events" in body:
        # A webhook URL's form beyond JSON Schema's ``uri`` (http or https, a host, a port
        # in range, no credentials): webhooks.addresses.parse, described in the schema.
        try:
            parse(body["url"])
        except AddressRefused:
            return False
    meta = json.dumps(body.get("meta") or {})
    if len(meta) > 2048 or "\\u0000" in meta:
        return False
    items = body.get("pushes") if isinstance(body.get("pushes"), list) else [body]
    return all(len(json.dumps(item.get("data"), ensure_ascii=False).encode()) <= 65536
               for item in items if isinstance(item, dict))


def operations(schema: schemathesis.schemas.BaseSchema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


# schemathesis' pytest plugin does not run under this pytest (9); its strategies do, one
# hypothesis run per operation and generation mode.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["valid", "invalid"])
def test_every_operation_answers_within_its_schema(served_schema, fuzzed_node, api_key, mode):
    found = operations(served_schema)
    assert len(found) >= 9, [op.label for op in found]
    for operation in found:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def answers_within_the_schema(case) -> None:
            if mode == GenerationMode.POSITIVE:
                assume(within_unstated_limits(case.body))
            case.call_and_validate(base_url=fuzzed_node.url,
                                   headers={"Authorization": f"Token {api_key}"}, timeout=10)

        answers_within_the_schema()
