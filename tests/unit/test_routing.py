"""Routed delivery without services: the router (push_app/routing.py), the relay publishing
per destination, the hub's hooks and the node's cluster-wide cap (gateway_node/routing.py),
with an in-memory presence map (the Redis one: tests/cluster/test_routing.py)."""

from __future__ import annotations

import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from gateway_core import routing_metrics
from gateway_core.brokers.base import BrokerUnavailable
from gateway_core.brokers.local import LocalBroker
from gateway_core.messages import ControlMessage, PushMessage, decode, encode
from gateway_core.presence_map import routing_mode
from gateway_node.routing import NodeRouting
from push_app.relay import Relay
from push_app.routing import BROADCAST, PresenceRouter
from sessions_app.close_codes import CloseCode
from sessions_app.delivery import Deliverer
from sessions_app.hub import Hub
from sessions_app.recorder import SessionRecorder
from sessions_app.registry import SessionManager
from tests.support.presence import FakePresence
from tests.support.sessions import make_session

NOW = 1_800_000_000.0


def push(push_id: str, users: tuple[str, ...] | None = ("u1",), app: str = "default"
         ) -> PushMessage:
    return PushMessage(id=push_id, users=users, data_json="{}", topic=None,
                       accepted_ms=int(NOW * 1000), app=app)


def router(presence: FakePresence, *, mode: str = "routed", live: set[str] | None = None
           ) -> PresenceRouter:
    return PresenceRouter(presence=presence, node_id=f"r-{uuid.uuid4().hex[:6]}",
                          mode=lambda: mode, live_nodes=lambda: live or {"n1"})


def ids(routes) -> list[tuple[str | None, list[str]]]:
    return [(node, [m.id for m in messages]) for node, messages in routes]


# --- the mode ------------------------------------------------------------------------

def test_routing_defaults_to_routed_with_redis_and_broadcast_without():
    with override_settings(REDIS_URL="redis://x", GATEWAY_ROUTING=""):
        assert routing_mode() == "routed"
    with override_settings(REDIS_URL="", GATEWAY_ROUTING=""):
        assert routing_mode() == "broadcast"
    with override_settings(REDIS_URL="redis://x", GATEWAY_ROUTING="broadcast"):
        assert routing_mode() == "broadcast"


@pytest.mark.parametrize("value", ["routed", "sometimes"])
def test_a_routing_mode_that_cannot_work_is_refused(value: str):
    with (override_settings(REDIS_URL="", GATEWAY_ROUTING=value),
          pytest.raises(ImproperlyConfigured)):
        routing_mode()


# --- the router ----------------------------------------------------------------------

async def test_a_targeted_push_goes_only_to_the_nodes_holding_its_users():
    presence = FakePresence()
    presence.put("n1", "default", "u1", "s1", 1.0)
    presence.put("n2", "default", "u2", "s2", 1.0)
    presence.put("n3", "default", "u3", "s3", 1.0)
    routes = await router(presence, live={"n1", "n2", "n3"}).route([
        push("a", ("u1",)), push("b", ("u1", "u2")), push("c", ("nobody",)),
        push("d", None), ControlMessage(id="o", action="disconnect", users=("u3",),
                                        session_ids=(), reason="", issued_ms=0),
    ])
    assert ids(routes) == [(BROADCAST, ["d", "o"]), ("n1", ["a", "b"]), ("n2", ["b"])]


async def test_users_are_per_app():
    presence = FakePresence()
    presence.put("n2", "shop", "u1", "s1", 1.0)
    routes = await router(presence, live={"n1", "n2"}).route(
        [push("a", ("u1",)), push("b", ("u1",), app="shop")])
    assert ids(routes) == [("n2", ["b"])]


async def test_broadcast_mode_reads_no_map():
    presence = FakePresence()
    routes = await router(presence, mode="broadcast").route([push("a"), push("b")])
    assert ids(routes) == [(BROADCAST, ["a", "b"])]
    assert presence.lookups == 0


async def test_an_unreachable_map_broadcasts_the_round():
    presence = FakePresence()
    presence.available = False
    r = router(presence)
    routes = await r.route([push("a")])
    assert ids(routes) == [(BROADCAST, ["a"])]
    assert routing_metrics.ROUTING_OUTCOMES.labels(r.node_id, "fallback")._value.get() == 1


async def test_a_live_node_without_a_marker_makes_the_router_broadcast():
    """An older node (or a map Redis lost) holds users the map does not show."""
    presence = FakePresence()
    presence.put("n1", "default", "u1", "s1", 1.0)
    routes = await router(presence, live={"n1", "old"}).route([push("a")])
    assert ids(routes) == [(BROADCAST, ["a"])]
    presence.marked["old"] = "1"
    routes = await router(presence, live={"n1", "old"}).route([push("a")])
    assert ids(routes) == [("n1", ["a"])]


async def test_an_order_for_one_node_goes_to_that_node():
    order = ControlMessage(id="o", action="replace", users=(), session_ids=("s9",),
                           reason="", issued_ms=0, node="n2")
    presence = FakePresence()
    presence.marked["n2"] = "1"
    routes = await router(presence, live={"n1", "n2"}).route([order])
    assert ids(routes) == [("n2", ["o"])]


def test_an_order_for_one_node_round_trips_and_older_encodings_stay_as_they_were():
    order = ControlMessage(id="o", action="replace", users=(), session_ids=("s9",),
                           reason="r", issued_ms=5, node="n2")
    assert decode(encode(order)) == order
    plain = ControlMessage(id="o", action="disconnect", users=("u1",), session_ids=(),
                           reason="r", issued_ms=5)
    assert b'"node"' not in encode(plain)
    assert decode(encode(plain)) == plain


# --- the relay -----------------------------------------------------------------------

class RoutedBroker(LocalBroker):
    max_batch_pushes = 10

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sent: list[tuple[str | None, list[str]]] = []
        self.refuse: set[str | None] = set()

    async def publish(self, message, *, node=None) -> None:
        await self.publish_batch([message], node=node)

    async def publish_batch(self, pushes, *, node=None) -> None:
        if node in self.refuse:
            raise BrokerUnavailable("refused")
        self.sent.append((node, [p.id for p in pushes]))


class NoDb:
    async def __call__(self, fn, *args):
        return []


async def test_the_relay_publishes_once_per_holding_node_and_retries_only_refused_routes():
    presence = FakePresence()
    presence.put("n1", "default", "u1", "s1", 1.0)
    presence.put("n2", "default", "u2", "s2", 1.0)
    broker = RoutedBroker(node_id="n1")
    relay = Relay(broker=broker, db=NoDb(), node_id="n1",
                  router=router(presence, live={"n1", "n2"}))
    relay.clock = lambda: NOW
    broker.refuse = {"n2"}
    for message in (push("a", ("u1",)), push("b", ("u2",)), push("c", ("gone",))):
        relay.submit(message)
    assert await relay.publish_some() is False
    assert broker.sent == [("n1", ["a"])]
    # "c" has no holder: nothing on the broker, and it is published (kept in the database).
    assert relay._published == ["a", "c"]
    assert [m.id for m in relay.pending] == ["b"]
    broker.refuse.clear()
    assert await relay.publish_some() is True
    assert broker.sent[-1] == ("n2", ["b"])


async def test_a_router_that_raises_costs_a_broadcast_not_the_pushes():
    class Broken:
        async def route(self, batch):
            raise RuntimeError("bug")

    broker = RoutedBroker(node_id="n1")
    relay = Relay(broker=broker, db=NoDb(), node_id="n1", router=Broken())
    relay.clock = lambda: NOW
    relay.submit(push("a"))
    assert await relay.publish_some() is True
    assert broker.sent == [(None, ["a"])]


# --- the node's side: hub hooks, the race's order, the cluster-wide cap -----------------

def make_routing(presence: FakePresence, node_id: str = "n1"
                 ) -> tuple[NodeRouting, Hub, list]:
    recorder = SessionRecorder(node_id=node_id, address="", broker="local", started_at=0.0,
                               node_timeout_s=30)
    registry = SessionManager()
    hub = Hub(node_id=node_id, registry=registry, recorder=recorder)
    submitted: list = []

    async def db(fn, *args):
        return [node_id]

    routing = NodeRouting(node_id=node_id, registry=registry, hub=hub, db=db,
                          submit=submitted.append, started_at=NOW,
                          presence=presence)  # type: ignore[arg-type]
    return routing, hub, submitted


async def test_a_session_is_in_the_map_when_hub_open_returns_and_leaves_it_on_close():
    presence = FakePresence()
    _, hub, _ = make_routing(presence)
    session = make_session("u1", "s1")
    await hub.open(session, max_per_user=5)
    assert [c.session_id for c in await presence.connections("default", "u1")] == ["s1"]
    await hub.close(session, CloseCode.DISCONNECTED)
    assert await presence.connections("default", "u1") == []


async def test_the_map_down_does_not_stop_a_connection():
    presence = FakePresence()
    _, hub, _ = make_routing(presence)
    presence.available = False
    session = make_session("u1", "s1")
    await hub.open(session, max_per_user=5)
    assert hub.registry.get("s1") is session


async def test_a_session_missing_from_the_map_makes_publishers_broadcast():
    # An add that fails while the map answers lookups (found under a reconnect storm):
    # were the node's marker left as it was, a publisher would find the user connected
    # nowhere and publish its push to no node, after the session's inbox was read.
    presence = FakePresence()
    _, hub, _ = make_routing(presence)
    presence.adds_fail = True
    await hub.open(make_session("u1", "s1"), max_per_user=5)
    assert hub.registry.get("s1") is not None
    presence.marked["n2"] = "1"
    routes = await router(presence, live={"n1", "n2"}).route([push("a")])
    assert ids(routes) == [(BROADCAST, ["a"])]


async def test_the_cluster_cap_closes_the_oldest_connection_wherever_it_is():
    presence = FakePresence()
    presence.put("n2", "default", "u1", "remote-old", 1.0)
    _, hub, submitted = make_routing(presence)
    local = make_session("u1", "local-mid")
    local.connected_at = 2.0
    newest = make_session("u1", "new")
    newest.connected_at = 3.0
    with override_settings(GATEWAY_MAX_CONNECTIONS_PER_USER_CLUSTER=2):
        await hub.open(local, max_per_user=5)
        assert submitted == []
        await hub.open(newest, max_per_user=5)
    # The oldest is on n2: an order routed to n2 closes it with 4009.
    [order] = submitted
    assert (order.action, order.node, order.session_ids) == ("replace", "n2", ("remote-old",))
    assert [c.session_id for c in await presence.connections("default", "u1")] == [
        "local-mid", "new"]
    third = make_session("u1", "newer")
    third.connected_at = 4.0
    with override_settings(GATEWAY_MAX_CONNECTIONS_PER_USER_CLUSTER=2):
        await hub.open(third, max_per_user=5)
    # The oldest is now here: closed at once, with 4009.
    assert local.connection.closes == [CloseCode.REPLACED]
    assert hub.registry.get("local-mid") is None


async def test_the_cap_is_off_by_default():
    presence = FakePresence()
    presence.put("n2", "default", "u1", "remote", 1.0)
    _, hub, submitted = make_routing(presence)
    for i in range(6):
        await hub.open(make_session("u1", f"s{i}"), max_per_user=10)
    assert submitted == []


async def test_a_replace_order_closes_the_named_session_with_4009():
    registry = SessionManager()
    closed: list = []

    async def close(session, code):
        closed.append((session.session_id, code))

    deliverer = Deliverer(node_id="n2", registry=registry, on_delivered=lambda *a: None,
                          close_session=close, drop_session=close)
    registry.register(make_session("u1", "s9"), max_per_user=5)
    await deliverer.handle(ControlMessage(id="o", action="replace", users=(),
                                          session_ids=("s9",), reason="", issued_ms=0,
                                          node="n2"))
    assert closed == [("s9", CloseCode.REPLACED)]


def test_a_node_refuses_to_route_without_redis():
    from gateway_node.node import GatewayNode

    with (override_settings(REDIS_URL="", GATEWAY_ROUTING="routed"),
          pytest.raises(ImproperlyConfigured, match="needs REDIS_URL")):
        GatewayNode(role="all", broker=LocalBroker(node_id="x"))
    with override_settings(REDIS_URL="", GATEWAY_ROUTING=""):
        assert GatewayNode(role="all", broker=LocalBroker(node_id="x")).routing is None
