"""The node's loops wired together in-process: API service → relay → local broker → socket."""

from __future__ import annotations

import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from gateway_core import metrics
from gateway_core.brokers.local import LocalBroker
from gateway_core.conf import gateway_settings
from gateway_core.tokens import encode_token
from gateway_node.node import GatewayNode, get_node, set_node
from push_app import services
from push_app.models import PushLog, PushStatus
from push_app.recipients import Recovery
from push_app.validation import push_request
from sessions_app.consumers import GatewayConsumer
from sessions_app.models import Node as NodeRow
from sessions_app.models import SessionRecord
from tests.support.sessions import make_session


async def eventually(predicate, *, timeout_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def create_push(node: GatewayNode, users: list[str]) -> PushLog:
    """The API's write of a push; the tests run it with ``node.db``, on the node's database
    thread, which writes too: the shared-cache memory database fails a write that meets
    another thread's at once ("database table is locked"), where a node's SQLite file waits
    out its busy timeout (a loaded machine failed the tests here)."""
    log, created = services.push_create(
        client=None, req=push_request({"users": users, "data": {"hello": "there"}}),
        submit=node.relay.submit_threadsafe,
    )
    assert created
    return log


@pytest.mark.django_db(transaction=True)
async def test_push_from_the_database_to_the_socket_and_the_accounts_back(node: GatewayNode):
    await node.start()
    try:
        await eventually(lambda: node.relay._loop is not None)
        token, _ = encode_token(user_id="u1", ttl_s=600, secret=gateway_settings.jwt_secret)
        comm = WebsocketCommunicator(GatewayConsumer.as_asgi(node=get_node), f"/ws/?token={token}")
        assert (await comm.connect())[0]
        welcome = await comm.receive_json_from()

        log = await node.db(create_push, node, ["u1"])
        frame = await comm.receive_json_from(timeout=3)
        assert (frame["type"], frame["id"], frame["data"]) == ("push", log.id, {"hello": "there"})
        await comm.send_json_to({"type": "ack", "id": log.id})
        await comm.send_json_to({"type": "ping"})
        assert (await comm.receive_json_from())["type"] == "pong"
    finally:
        await node.stop()

    close = await comm.receive_output()
    assert (close["type"], close["code"]) == ("websocket.close", 4012)
    await comm.disconnect()
    assert node.running is False

    log = await PushLog.objects.aget(id=log.id)
    assert (log.status, log.delivered, log.acked) == (PushStatus.DELIVERED, 1, 1)
    assert log.published_at is not None
    row = await NodeRow.objects.aget(id=node.node_id)
    assert row.stopped_at is not None
    record = await SessionRecord.objects.aget(id=welcome["session"])
    assert record.close_code == 4012
    assert record.user_id == "u1"


@pytest.mark.django_db(transaction=True)
async def test_ensure_started_honours_autostart(node: GatewayNode):
    await node.ensure_started()
    assert node.running is False
    node.autostart = True
    try:
        await asyncio.gather(node.ensure_started(), node.ensure_started())
        assert node.running is True
        # relay, housekeeping, webhooks, presence and settled events, loop lag, consume
        assert len(node._tasks) == 7
    finally:
        await node.stop()
    assert node._tasks == []


@pytest.mark.django_db(transaction=True)
async def test_a_stopping_node_is_not_started_again_by_a_connection(node: GatewayNode):
    node.autostart = True
    await node.ensure_started()
    assert node.running is True
    stopping = asyncio.create_task(node.stop())
    await asyncio.sleep(0)  # draining: what a client reconnecting now would call
    await node.ensure_started()
    await stopping
    await node.ensure_started()
    assert node.running is False and node._tasks == []


async def test_ledger_totals_survive_a_failed_write(node: GatewayNode):
    node.ledger.delivered("p1", 2)
    written = []

    async def broken_db(fn, *args):
        raise RuntimeError("database is locked")

    async def working_db(fn, *args):
        written.append(args)

    node.db = broken_db
    with pytest.raises(RuntimeError):
        await node.write_ledger()
    node.db = working_db
    await node.write_ledger()
    assert written == [({"p1": (2, 0)},)]


async def test_the_ledger_is_written_a_database_job_per_part(node: GatewayNode,
                                                           monkeypatch):
    # Pushes' commits share the database thread: no job may hold it for a whole second's
    # deliveries. A part that fails is written, with every later one, next time.
    monkeypatch.setattr("push_app.ledger.JOB_PUSHES", 2)
    for n in range(5):
        node.ledger.delivered(f"p{n}", 1)
    jobs: list[dict] = []

    async def fails_second_job(fn, *args):
        if len(jobs) == 1:
            raise RuntimeError("database is locked")
        jobs.append(args[0])

    node.db = fails_second_job
    with pytest.raises(RuntimeError):
        await node.write_ledger()
    assert jobs == [{"p0": (1, 0), "p1": (1, 0)}]

    async def works(fn, *args):
        jobs.append(args[0])

    node.db = works
    await node.write_ledger()
    assert jobs[1:] == [{"p2": (1, 0), "p3": (1, 0)}, {"p4": (1, 0)}]


async def test_sessions_connecting_together_have_their_inboxes_read_in_one_job(
        node: GatewayNode):
    jobs: list[list] = []

    async def db(fn, *args):
        asks = fn.args[0]
        jobs.append(asks)
        return [Recovery(pushes=[], complete=None if since is None else True)
                for _, _, since in asks]

    node.db = db
    since = "0" * 32
    found = await asyncio.gather(*(node.recover(make_session(f"u{i}", f"s{i}"), since)
                                   for i in range(5)))
    # One hand-off to the database thread for the five, not five.
    assert [[user for _, user, _ in job] for job in jobs] == [["u0", "u1", "u2", "u3", "u4"]]
    assert all(job_since == since for job in jobs for _, _, job_since in job)
    assert [r.complete for r in found] == [True] * 5


@pytest.mark.django_db(transaction=True)
async def test_asgi_lifespan_starts_the_node_and_drains_it(node: GatewayNode):
    from gatewaysite.asgi import application

    node.autostart = True
    inbox: asyncio.Queue[dict] = asyncio.Queue()
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    task = asyncio.create_task(application({"type": "lifespan"}, inbox.get, send))
    try:
        await inbox.put({"type": "lifespan.startup"})
        await eventually(lambda: len(sent) == 1)
        assert sent == [{"type": "lifespan.startup.complete"}]
        assert node.running is True
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 5)
        assert sent[-1] == {"type": "lifespan.shutdown.complete"}
        assert node.running is False
        assert node.hub.draining is True
    finally:
        if not task.done():
            task.cancel()
            await node.stop()


async def test_asgi_lifespan_reports_a_node_that_cannot_start(node: GatewayNode, monkeypatch):
    from gatewaysite.asgi import application

    async def broken() -> None:
        raise RuntimeError("no database")

    monkeypatch.setattr(node, "ensure_started", broken)
    inbox: asyncio.Queue[dict] = asyncio.Queue()
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await inbox.put({"type": "lifespan.startup"})
    await asyncio.wait_for(application({"type": "lifespan"}, inbox.get, send), 5)
    assert sent == [{"type": "lifespan.startup.failed", "message": "no database"}]


class FlakyBroker(LocalBroker):
    """A local broker whose consume loop fails once when told to."""

    explode = False

    async def consume(self, handler):
        async def guarded(message):
            if self.explode:
                self.explode = False
                raise ConnectionError("the broker connection broke")
            await handler(message)

        await super().consume(guarded)


@pytest.mark.django_db(transaction=True)
async def test_healthz_follows_the_delivery_loop_which_is_restarted():
    broker = FlakyBroker(node_id="test-node")
    node = GatewayNode(role="all", broker=broker)
    node.autostart = False
    set_node(node)
    client = AsyncClient()
    try:
        response = await client.get("/healthz")
        assert response.status_code == 503  # not started yet
        await node.start()
        assert (await client.get("/healthz")).status_code == 200
        consume = node.loops["consume"]
        release = asyncio.Event()
        waits: list[float] = []

        async def held_sleep(seconds: float) -> None:
            waits.append(seconds)
            await release.wait()

        consume.sleep = held_sleep
        token, _ = encode_token(user_id="u1", ttl_s=600, secret=gateway_settings.jwt_secret)
        comm = WebsocketCommunicator(GatewayConsumer.as_asgi(node=get_node), f"/ws/?token={token}")
        assert (await comm.connect())[0]
        await comm.receive_json_from()

        broker.explode = True
        await node.db(create_push, node, ["u1"])
        await eventually(lambda: waits == [0.5])
        response = await client.get("/healthz")
        assert response.status_code == 503
        assert response.json()["detail"] == "the consume loop is down, waiting to restart"
        assert metric_value(metrics.LOOP_RUNNING, "test-node", "consume") == 0

        release.set()
        await eventually(lambda: consume.running)
        assert (await client.get("/healthz")).status_code == 200
        assert consume.restarts == 1
        log = await node.db(create_push, node, ["u1"])
        frame = await comm.receive_json_from(timeout=3)
        assert frame["id"] == log.id  # delivering again
        await comm.disconnect()
    finally:
        await node.stop()
        set_node(None)
        node._db_executor.shutdown(wait=False)


def metric_value(metric, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())
