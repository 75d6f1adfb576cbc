"""gateway_core.bridge: the one way sync code reaches this process's node."""

from __future__ import annotations

import pytest

from gateway_core import bridge
from gateway_core.messages import ControlMessage
from gateway_node.node import GatewayNode, set_node


def test_nothing_installed_is_a_clear_error():
    bridge.uninstall()
    message = ControlMessage(id="o1", action="disconnect", users=("u1",), session_ids=(), reason="",
                             issued_ms=0)
    with pytest.raises(bridge.BridgeNotInstalled, match="no gateway node is installed"):
        bridge.submit(message)
    with pytest.raises(bridge.BridgeNotInstalled):
        bridge.backlog()
    with pytest.raises(bridge.BridgeNotInstalled):
        bridge.user_presence("u1")


def test_the_installed_node_receives_what_sync_code_submits(node: GatewayNode, monkeypatch):
    # No event loop runs here: let the relay queue on the spot.
    monkeypatch.setattr(node.relay, "submit_threadsafe", node.relay.submit)
    message = ControlMessage(id="o2", action="disconnect", users=("u1",), session_ids=(),
                             reason="bye", issued_ms=0)
    assert bridge.installed()
    bridge.submit(message)
    assert list(node.relay.pending) == [message]
    assert bridge.backlog() == 1


@pytest.mark.django_db
def test_presence_comes_from_the_installed_node(node: GatewayNode):
    assert bridge.user_presence("nobody") == node.user_presence("nobody")


def test_forgetting_the_node_uninstalls_the_bridge(node: GatewayNode):
    set_node(None)
    assert not bridge.installed()


def test_the_rate_limits_are_the_installed_nodes(node: GatewayNode):
    assert bridge.rate_limits() is node.rate_limits
    fresh = GatewayNode(role="all", broker=node.broker)
    try:
        assert fresh.rate_limits is not node.rate_limits
    finally:
        fresh._db_executor.shutdown(wait=False)
