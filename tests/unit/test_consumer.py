from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from gateway_core import metrics
from gateway_core.conf import gateway_settings
from gateway_core.messages import ControlMessage, PushMessage
from gateway_core.tokens import encode_token
from gateway_node.node import GatewayNode, get_node
from sessions_app.close_codes import CloseCode
from sessions_app.consumers import GatewayConsumer
from sessions_app.flow import TOO_SLOW

pytestmark = pytest.mark.usefixtures("node")


def token(user: str = "u1", **kwargs) -> str:
    return encode_token(user_id=user, ttl_s=600, secret=gateway_settings.jwt_secret,
                        **kwargs)[0]


def communicator(path: str, headers=None, app=None) -> WebsocketCommunicator:
    app = app or GatewayConsumer.as_asgi(node=get_node)
    return WebsocketCommunicator(app, path, headers=headers)


async def connect(user: str = "u1", **kwargs) -> tuple[WebsocketCommunicator, dict]:
    comm = communicator(f"/ws/?token={token(user, **kwargs)}")
    connected, _ = await comm.connect()
    assert connected
    welcome = await comm.receive_json_from()
    assert welcome["type"] == "welcome"
    return comm, welcome


async def expect_close(comm: WebsocketCommunicator, code: int) -> dict:
    message = await comm.receive_output()
    assert message["type"] == "websocket.close"
    assert message["code"] == code
    assert await comm.receive_nothing(timeout=0.02)
    return message


def push(push_id: str, users=("u1",)) -> PushMessage:
    return PushMessage(id=push_id, users=users, data_json='{"n":1}', topic="t",
                       accepted_ms=int(time.time() * 1000))


def auth_failures(node: GatewayNode) -> float:
    return metrics.REGISTRY.get_sample_value(
        "gateway_auth_failures_total", {"node": node.node_id}) or 0.0


def expired_token() -> str:
    return encode_token(user_id="u1", ttl_s=60, secret=gateway_settings.jwt_secret,
                        now=time.time() - 3600)[0]


def foreign_token() -> str:
    return jwt.encode({"sub": "u1", "exp": int(time.time()) + 60}, "x" * 64, algorithm="HS256")


@pytest.mark.parametrize("query", ["", "token=", "token=garbage", "token={expired}",
                                   "token={foreign}"])
async def test_bad_token_is_accepted_then_closed_with_4001(node: GatewayNode, query: str):
    before = auth_failures(node)
    comm = communicator("/ws/?" + query.format(expired=expired_token(), foreign=foreign_token()))
    connected, _ = await comm.connect()
    assert connected
    message = await expect_close(comm, 4001)
    assert message["reason"]
    assert len(node.registry) == 0
    assert auth_failures(node) == before + 1
    await comm.disconnect()


async def test_bearer_header_authenticates(node: GatewayNode):
    comm = communicator("/ws/", headers=[(b"authorization", f"Bearer {token('hdr')}".encode())])
    connected, _ = await comm.connect()
    assert connected
    assert (await comm.receive_json_from())["user"] == "hdr"
    await comm.disconnect()


async def test_query_token_wins_over_header(node: GatewayNode):
    comm = communicator(f"/ws/?token={token('from-query')}",
                        headers=[(b"authorization", f"Bearer {token('from-header')}".encode())])
    await comm.connect()
    assert (await comm.receive_json_from())["user"] == "from-query"
    await comm.disconnect()


@override_settings(GATEWAY_HEARTBEAT_INTERVAL_S=7, GATEWAY_HEARTBEAT_TIMEOUT_S=21)
async def test_welcome_shape_and_session(node: GatewayNode):
    comm = communicator(f"/ws/?token={token('alice', meta={'plan': 'pro'})}",
                        headers=[(b"user-agent", b"unit-test")])
    await comm.connect()
    welcome = await comm.receive_json_from()
    assert list(welcome) == ["type", "session", "node", "user", "heartbeat"]
    assert welcome["node"] == node.node_id
    assert welcome["user"] == "alice"
    assert welcome["heartbeat"] == {"interval": 7, "timeout": 21}
    session = node.registry.get(welcome["session"])
    assert session is not None
    assert (session.user_id, session.meta, session.user_agent) == (
        "alice", {"plan": "pro"}, "unit-test")
    await comm.disconnect()


async def test_ping_pong(node: GatewayNode):
    comm, _welcome = await connect()
    before = int(time.time() * 1000)
    await comm.send_json_to({"type": "ping"})
    pong = await comm.receive_json_from()
    assert list(pong) == ["type", "ts"]
    assert pong["type"] == "pong"
    assert before <= pong["ts"] <= int(time.time() * 1000)
    await comm.disconnect()


async def test_text_frames_refresh_last_seen(node: GatewayNode):
    comm, welcome = await connect()
    session = node.registry.get(welcome["session"])
    session.last_seen = 0.0
    await comm.send_json_to({"type": "ping"})
    await comm.receive_json_from()
    assert session.last_seen > time.time() - 5
    await comm.disconnect()


@pytest.mark.parametrize("frame, detail", [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('"ping"', "not a JSON object"),
    ('{"type": "subscribe"}', "unknown frame type"),
    ("{}", "unknown frame type"),
    ('{"type": "ack"}', "ack needs"),
    ('{"type": "ack", "id": 5}', "ack needs"),
])
async def test_bad_frames_get_an_error_and_the_connection_stays(node: GatewayNode, frame, detail):
    comm, welcome = await connect()
    await comm.send_to(text_data=frame)
    error = await comm.receive_json_from()
    assert error["type"] == "error"
    assert error["code"] == "bad_frame"
    assert detail in error["detail"]
    await comm.send_json_to({"type": "ping"})
    assert (await comm.receive_json_from())["type"] == "pong"
    assert node.registry.get(welcome["session"]) is not None
    await comm.disconnect()


async def test_binary_frames_get_an_error_and_do_not_count_as_life(node: GatewayNode):
    comm, welcome = await connect()
    session = node.registry.get(welcome["session"])
    session.last_seen = 0.0
    await comm.send_to(bytes_data=b'{"type":"ping"}')
    error = await comm.receive_json_from()
    assert (error["type"], error["code"]) == ("error", "bad_frame")
    assert session.last_seen == 0.0
    await comm.disconnect()


async def test_frame_at_the_limit_is_read(node: GatewayNode):
    comm, _ = await connect()
    with override_settings(GATEWAY_MAX_FRAME_BYTES=64):
        frame = json.dumps({"type": "ping", "pad": "x" * 100})[:64]
        await comm.send_to(text_data=frame)
        assert (await comm.receive_json_from())["code"] == "bad_frame"
    await comm.disconnect()


@pytest.mark.parametrize("frame", [
    json.dumps({"type": "ping", "pad": "x" * 4096}),
    json.dumps({"type": "ping", "pad": "é" * 2100}, ensure_ascii=False),  # 2100 chars, 4200 bytes
])
async def test_oversize_frame_closes_with_4013(node: GatewayNode, frame):
    comm, welcome = await connect()
    await comm.send_to(text_data=frame)
    await expect_close(comm, 4013)
    assert node.registry.get(welcome["session"]) is None
    await comm.disconnect()


async def test_oversize_binary_frame_closes_with_4013(node: GatewayNode):
    comm, _ = await connect()
    await comm.send_to(bytes_data=b"x" * 4097)
    await expect_close(comm, 4013)
    await comm.disconnect()


@override_settings(GATEWAY_MAX_FRAMES_PER_MINUTE=3)
async def test_too_many_frames_closes_with_4029(node: GatewayNode):
    comm, welcome = await connect()
    for _ in range(3):
        await comm.send_json_to({"type": "ping"})
        assert (await comm.receive_json_from())["type"] == "pong"
    await comm.send_json_to({"type": "ping"})
    await expect_close(comm, 4029)
    assert node.registry.get(welcome["session"]) is None
    await comm.disconnect()


async def test_push_reaches_the_client_and_its_ack_is_counted(node: GatewayNode):
    comm, _ = await connect("u1")
    other, _ = await connect("u2")
    await node.deliverer.handle(push("p-1"))
    frame = await comm.receive_json_from()
    assert frame == {"type": "push", "id": "p-1", "topic": "t", "data": {"n": 1},
                     "ts": frame["ts"]}
    assert await other.receive_nothing(timeout=0.02)

    await comm.send_json_to({"type": "ack", "id": "p-1"})
    await comm.send_json_to({"type": "ping"})
    assert (await comm.receive_json_from())["type"] == "pong"  # the ack is silent
    # A repeat, and a push this connection never got: bad_ack, not counted.
    for push_id in ("p-1", "never-sent"):
        await comm.send_json_to({"type": "ack", "id": push_id})
        assert await comm.receive_json_from() == {
            "type": "error", "code": "bad_ack",
            "detail": "no unacked push with this id was sent to this connection"}
    # A user who was not a target cannot ack someone else's push.
    await other.send_json_to({"type": "ack", "id": "p-1"})
    assert (await other.receive_json_from())["code"] == "bad_ack"
    assert node.ledger.take() == {"p-1": (1, 1)}
    await comm.disconnect()
    await other.disconnect()


@override_settings(GATEWAY_MAX_FRAMES_PER_MINUTE=3)
async def test_valid_acks_do_not_count_toward_the_frame_budget_and_bad_ones_do(node: GatewayNode):
    comm, _ = await connect("u1")
    for i in range(10):
        await node.deliverer.handle(push(f"p-{i}"))
        assert (await comm.receive_json_from())["id"] == f"p-{i}"
        await comm.send_json_to({"type": "ack", "id": f"p-{i}"})
    for _ in range(3):
        await comm.send_json_to({"type": "ack", "id": "p-0"})
        assert (await comm.receive_json_from())["code"] == "bad_ack"
    await comm.send_json_to({"type": "ack", "id": "p-0"})
    await expect_close(comm, 4029)
    await comm.disconnect()


@pytest.mark.parametrize("text", [
    "[" * 2000 + "]" * 2000,
    '{"type": ' + "[" * 900 + "]" * 900 + "}",
    '{"type": 1e999}',
    '{"type": "ack", "id": 1' + "0" * 4400 + "}",
    '{"type": "\\ud800"}',
])
@override_settings(GATEWAY_MAX_FRAME_BYTES=8192)  # room for a number of 4,400 digits
async def test_frames_however_built_get_an_error_and_the_connection_stays(node: GatewayNode, text):
    comm, welcome = await connect("u1")
    await comm.send_to(text_data=text)
    error = await comm.receive_json_from()
    assert (error["type"], error["code"]) == ("error", "bad_frame"), error
    await comm.send_json_to({"type": "ping"})
    assert (await comm.receive_json_from())["type"] == "pong"
    assert node.registry.get(welcome["session"]) is not None
    await comm.disconnect()


async def test_a_failing_handler_unregisters_its_session_at_once(node: GatewayNode, monkeypatch):
    comm, welcome = await connect("u1")
    bystander, _ = await connect("u2")

    def broken(text: str) -> dict:
        raise RuntimeError("a bug in the frame handler")

    monkeypatch.setattr("sessions_app.frames.parse", broken)
    await comm.send_to(text_data='{"type": "ping"}')
    with pytest.raises(RuntimeError, match="a bug in the frame handler"):
        await comm.wait(timeout=1)
    # No ghost: not online, and no push reported delivered to a dead connection.
    assert node.registry.get(welcome["session"]) is None
    assert "u1" not in node.registry.users_of()
    assert await node.deliverer.deliver_push(push("p-ghost", users=("u1", "u2"))) == 1
    assert (await bystander.receive_json_from())["id"] == "p-ghost"
    assert metrics.REGISTRY.get_sample_value(
        "gateway_session_failures_total", {"node": node.node_id, "where": "handler"}) >= 1
    await bystander.disconnect()


async def test_a_write_that_raises_drops_only_that_session(node: GatewayNode):
    _, welcome = await connect("u1")
    bystander, _ = await connect("u2")
    session = node.registry.get(welcome["session"])
    assert session is not None

    class Disconnected(Exception):
        """What autobahn raises for a write to a connection Daphne is closing."""

    async def raising_send(message: dict) -> None:
        raise Disconnected("Attempt to send on a closed protocol")

    session.connection.base_send = raising_send  # type: ignore[attr-defined]
    assert await node.deliverer.deliver_push(push("p-1", users=("u1", "u2"))) == 1
    assert (await bystander.receive_json_from())["id"] == "p-1"
    assert node.registry.get(welcome["session"]) is None
    assert await node.deliverer.deliver_push(push("p-2", users=("u1", "u2"))) == 1
    assert (await bystander.receive_json_from())["id"] == "p-2"
    await bystander.disconnect()


async def test_broadcast_reaches_every_connection(node: GatewayNode):
    comms = [(await connect(f"u{i}"))[0] for i in range(3)]
    await node.deliverer.handle(push("p-all", users=None))
    for comm in comms:
        assert (await comm.receive_json_from())["id"] == "p-all"
        await comm.disconnect()
    assert node.ledger.take() == {"p-all": (3, 0)}


@override_settings(GATEWAY_MAX_CONNECTIONS_PER_USER=1)
async def test_cap_closes_the_oldest_with_4009(node: GatewayNode):
    first, w1 = await connect("u1")
    second, w2 = await connect("u1")
    await expect_close(first, 4009)
    assert node.registry.get(w1["session"]) is None
    assert node.registry.get(w2["session"]) is not None
    await node.deliverer.handle(push("p-after"))
    assert (await second.receive_json_from())["id"] == "p-after"
    assert await first.receive_nothing(timeout=0.02)
    await first.disconnect()
    await second.disconnect()


async def test_sweep_closes_silent_connections_with_4008(node: GatewayNode):
    comm, welcome = await connect()
    assert await node.hub.sweep(timeout_s=60, now=time.time() + 1000) == 1
    await expect_close(comm, 4008)
    assert node.registry.get(welcome["session"]) is None
    await comm.disconnect()


async def test_control_order_closes_with_4010(node: GatewayNode):
    comm, _ = await connect("u1")
    order = ControlMessage(id="c-1", action="disconnect", users=("u1",), session_ids=(),
                           reason="ops", issued_ms=int(time.time() * 1000))
    await node.deliverer.handle(order)
    await expect_close(comm, 4010)
    assert len(node.registry) == 0
    await comm.disconnect()


async def test_drain_closes_with_4012_and_refuses_new_connections(node: GatewayNode):
    comm, _ = await connect()
    assert await node.hub.drain() == 1
    await expect_close(comm, 4012)
    await comm.disconnect()

    late = communicator(f"/ws/?token={token()}")
    connected, _ = await late.connect()
    assert connected  # accepted so that the client sees the code
    await expect_close(late, 4012)
    assert len(node.registry) == 0
    await late.disconnect()


async def test_disconnect_forgets_the_session(node: GatewayNode):
    comm, welcome = await connect()
    assert len(node.registry) == 1
    await comm.disconnect(code=1001)
    assert node.registry.get(welcome["session"]) is None
    assert node.registry.user_count == 0
    snap = node.recorder.snapshot(node.registry, now=time.time())
    assert [(sid, code) for sid, _, code in snap.closed] == [(welcome["session"], 1001)]


async def test_a_slow_client_is_closed_with_4030(node: GatewayNode):
    comm, welcome = await connect()

    connection = node.registry.get(welcome["session"]).connection

    class FullBuffer:
        def offer(self, frame: str) -> int:
            return TOO_SLOW

        async def close(self, message: dict) -> None:
            await connection.base_send(message)

    connection.buffer = FullBuffer()
    await node.deliverer.handle(push("p-slow"))
    await expect_close(comm, 4030)
    assert len(node.registry) == 0
    assert node.ledger.take() == {}
    await comm.disconnect()


async def test_routing_through_the_asgi_application(node: GatewayNode):
    from gatewaysite.asgi import application

    comm = communicator(f"/ws/?token={token('routed')}", app=application)
    connected, _ = await comm.connect()
    assert connected
    welcome = await comm.receive_json_from()
    assert welcome["user"] == "routed"
    assert node.registry.get(welcome["session"]) is not None
    await comm.disconnect()


class UvicornLikeConnection:
    """One client of the consumer through an ASGI ``send`` shaped like uvicorn's: a bound
    method of a protocol whose ``send`` waits while its transport is full."""

    class Transport:
        def __init__(self) -> None:
            self.buffered = 0
            self.aborted = False

        def get_write_buffer_size(self) -> int:
            return self.buffered

        def abort(self) -> None:
            self.aborted = True

    def __init__(self, user: str) -> None:
        self.transport = self.Transport()
        self.writable = asyncio.Event()
        self.writable.set()
        self.inbox: asyncio.Queue[dict] = asyncio.Queue()
        self.sent: list[dict] = []
        self.inbox.put_nowait({"type": "websocket.connect"})
        scope = {"type": "websocket", "path": "/ws/", "query_string":
                 f"token={token(user)}".encode(), "headers": [], "client": ("127.0.0.1", 1)}
        consumer = GatewayConsumer.as_asgi(node=get_node)
        self.task = asyncio.create_task(consumer(scope, self.inbox.get, self.send))

    async def send(self, message: dict) -> None:
        await self.writable.wait()
        self.sent.append(message)

    def pushes(self) -> list[str]:
        return [json.loads(m["text"])["id"] for m in self.sent
                if m["type"] == "websocket.send" and '"push"' in m["text"]]

    async def stop(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(self.task, 1)


async def test_a_stalled_uvicorn_client_never_holds_up_the_others(node: GatewayNode):
    with override_settings(GATEWAY_MAX_SEND_BUFFER_BYTES=2000):
        slow, healthy = UvicornLikeConnection("slow"), UvicornLikeConnection("healthy")
        # Both welcomed: a session's live pushes wait while its inbox is read (on the
        # database thread), and this test is about what comes after.
        for _ in range(400):
            if all(any('"welcome"' in str(m.get("text")) for m in c.sent)
                   for c in (slow, healthy)):
                break
            await asyncio.sleep(0.005)
        assert len(node.registry) == 2
        slow.writable.clear()  # the slow client's transport is full from here on
        slow.transport.buffered = 1000  # a few frames queue before the bound is passed
        for i in range(30):
            await asyncio.wait_for(node.deliverer.handle(push(f"p{i}", users=("slow", "healthy"))),
                                   0.5)
        assert healthy.pushes() == [f"p{i}" for i in range(30)]
        assert slow.pushes() == []
        assert len(node.registry) == 1  # the slow client was closed with 4030 ...
        slow.writable.set()  # ... and once its transport drains, the close goes out
        for _ in range(5):
            await asyncio.sleep(0)
        assert slow.sent[-1] == {"type": "websocket.close", "code": 4030,
                                 "reason": CloseCode.TOO_SLOW.reason}
        assert slow.pushes() == []
        await slow.stop()
        await healthy.stop()


# --- Replay on connect (PROTOCOL.md section 6) ----------------------------------------------

async def test_live_pushes_during_the_replay_come_after_it_and_are_not_lost(
    node: GatewayNode, monkeypatch,
):
    from push_app.recipients import Recovery, Replayed

    replayed = Replayed(id="a" * 32, frame=json.dumps({"type": "push", "id": "a" * 32}),
                        targeted=True)

    async def recover(session, since):
        # A live push reaches the session while its inbox is read; another is the same
        # push the replay carries.
        await node.deliverer.handle(push("b" * 32))
        await node.deliverer.handle(push("a" * 32))
        return Recovery(pushes=[replayed], complete=None)

    monkeypatch.setattr(node, "recover", recover)
    comm, welcome = await connect()
    assert "recovery" not in welcome  # no ``since``: no recovery block
    first = await comm.receive_json_from()
    second = await comm.receive_json_from()
    assert [first["id"], second["id"]] == ["a" * 32, "b" * 32]
    assert await comm.receive_nothing(timeout=0.05)  # "a" is not sent twice
    # Both may be acked: the session received them.
    for push_id in ("a" * 32, "b" * 32):
        await comm.send_json_to({"type": "ack", "id": push_id})
    assert await comm.receive_nothing(timeout=0.05)  # no bad_ack
    await comm.disconnect()


async def test_a_failing_inbox_read_still_welcomes_the_session(node: GatewayNode,
                                                              monkeypatch):
    async def broken(fn, *args):
        raise RuntimeError("database gone")

    monkeypatch.setattr(node, "db", broken)
    comm = communicator(f"/ws/?token={token()}&since={'c' * 32}")
    connected, _ = await comm.connect()
    assert connected
    welcome = await comm.receive_json_from()
    assert welcome["recovery"] == {"since": "c" * 32, "complete": False, "replayed": 0}
    node.deliverer._seen.clear()
    await node.deliverer.handle(push("d" * 32))
    assert (await comm.receive_json_from())["id"] == "d" * 32
    await comm.disconnect()
