"""Who may read /metrics (PROTOCOL.md sections 3 and 4): peers in ``GATEWAY_METRICS_ALLOW``
(default: loopback and private networks), or anyone with the bearer
``GATEWAY_METRICS_TOKEN``; everyone else gets a JSON 403 and no metric names."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings

from gateway_core.env import ConfigError
from gateway_node import metrics_access

PUBLIC = "203.0.113.5"


@pytest.fixture
def client() -> Client:
    return Client()


def _get(client: Client, peer: str, **headers: str) -> tuple[int, str]:
    response = client.get("/metrics", REMOTE_ADDR=peer, **headers)
    return response.status_code, response.content.decode()


def test_a_public_peer_is_refused_with_json(client: Client) -> None:
    status, body = _get(client, PUBLIC)
    assert status == 403
    assert body.startswith("{")
    assert "gateway_" not in body
    assert '"error": "forbidden"' in body


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1", "10.1.2.3", "172.20.0.9", "192.168.1.1",
                                  "::ffff:10.1.2.3"])
def test_loopback_and_private_peers_are_allowed_by_default(client: Client, peer: str) -> None:
    status, body = _get(client, peer)
    assert status == 200
    assert "gateway_" in body


def test_the_allow_list_is_read_at_use_time(client: Client) -> None:
    with override_settings(GATEWAY_METRICS_ALLOW=["203.0.113.0/24"]):
        assert _get(client, PUBLIC)[0] == 200
        assert _get(client, "127.0.0.1")[0] == 403
    with override_settings(GATEWAY_METRICS_ALLOW=[]):
        assert _get(client, "127.0.0.1")[0] == 403


def test_forwarded_headers_are_not_trusted(client: Client) -> None:
    assert _get(client, PUBLIC, HTTP_X_FORWARDED_FOR="127.0.0.1",
                HTTP_X_REAL_IP="127.0.0.1")[0] == 403


@override_settings(GATEWAY_METRICS_TOKEN="s3cret-metrics-token")
def test_the_bearer_token_opens_it_from_anywhere(client: Client) -> None:
    assert _get(client, PUBLIC, HTTP_AUTHORIZATION="Bearer s3cret-metrics-token")[0] == 200
    assert _get(client, PUBLIC, HTTP_AUTHORIZATION="bearer s3cret-metrics-token")[0] == 200
    assert _get(client, PUBLIC, HTTP_AUTHORIZATION="Bearer s3cret-metrics-tokeN")[0] == 403
    assert _get(client, PUBLIC, HTTP_AUTHORIZATION="Bearer ")[0] == 403
    assert _get(client, PUBLIC, HTTP_AUTHORIZATION="Token s3cret-metrics-token")[0] == 403


def test_no_token_configured_means_no_token_accepted(client: Client) -> None:
    with override_settings(GATEWAY_METRICS_TOKEN=""):
        assert _get(client, PUBLIC, HTTP_AUTHORIZATION="Bearer ")[0] == 403
        assert _get(client, PUBLIC, HTTP_AUTHORIZATION="Bearer")[0] == 403


def test_rule_without_a_peer_address() -> None:
    """A unix socket has no peer address: only the token opens it."""
    assert not metrics_access.allowed(peer=None, authorization=None)
    assert not metrics_access.allowed(peer="not-an-address", authorization=None)


def test_networks_are_parsed_once_per_value() -> None:
    metrics_access.networks.cache_clear()
    for _ in range(3):
        metrics_access.networks(("10.0.0.0/8", "::1/128"))
    assert metrics_access.networks.cache_info().misses == 1


def test_a_bad_cidr_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway_core import env

    monkeypatch.setenv("GATEWAY_METRICS_ALLOW", "10.0.0.0/8,not-a-network")
    with pytest.raises(ConfigError, match="GATEWAY_METRICS_ALLOW"):
        env.cidrs("GATEWAY_METRICS_ALLOW", "")
