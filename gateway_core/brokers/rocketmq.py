"""The ``rocketmq`` broker: RocketMQ 5 through its gRPC proxy (``rocketmq-python-client``).

Publishing: one message per push or control order on ``GATEWAY_ROCKETMQ_TOPIC``, tag
``push`` or ``control``, key = the push id. ``publish`` returns once the proxy has stored
the message (the send receipt) and raises ``BrokerUnavailable`` otherwise; the relay keeps
the push until a later attempt succeeds.

Routed delivery: a message for one node carries that node's tag (``node_tag``) instead of
``push``/``control``; each node subscribes to ``push||control||<its tag>``, and tags are
filtered on the server, so a node never receives another node's messages.

Consuming: gRPC clients have no broadcasting model, so each node has a consumer group of
its own (``gateway-<node id>``) and so receives every broadcast message; tags are filtered
on the server. Delivery is at least once: a message whose handler fails is logged and acked
(skipped), never redelivered forever; duplicates and history that a new group replays
from offset 0 are dropped by the delivery side (ids seen, ``published_ms`` before start).

Client facts this module works around (verified here, see docs/rocketmq-notes.md):
- ``send`` blocks its caller: ``send_async`` returns a ``concurrent.futures.Future``,
  awaited with ``asyncio.wrap_future``.
- A consumer does not recover from a proxy restart (the new proxy lacks its settings and
  the client re-sends them only every 300 s): after consecutive receive failures the
  consumer is replaced by a new one in the same group, which keeps the group's offsets.
- A stopped proxy surfaces as ``grpc.aio.AioRpcError``, not the client's own exceptions,
  so every exception from the client counts as "broker unavailable".
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from typing import Any

from gateway_core import metrics
from gateway_core.brokers.base import BaseBroker, BrokerUnavailable, Handler, task_cancelled
from gateway_core.messages import (
    TAG_CONTROL,
    TAG_PUSH,
    Message,
    PushMessage,
    encode,
    encode_batch,
)

logger = logging.getLogger("gateway.broker.rocketmq")


class _DropRpcNoise(logging.Filter):
    """The client's heartbeat callbacks re-raise while the proxy is down, and
    ``concurrent.futures`` logs a traceback for each every 10 s per client."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "AioRpcError":
            return False
        # A consumer's shutdown cancels its receive in flight, and the client's callback
        # then fails on its own closed executor: a traceback at every orderly stop.
        future = record.args[0] if isinstance(record.args, tuple) and record.args else None
        cancelled = getattr(future, "cancelled", None)
        return not (isinstance(exc, AttributeError) and callable(cancelled) and cancelled())


logging.getLogger("concurrent.futures").addFilter(_DropRpcNoise())


def consumer_group(node_id: str) -> str:
    """``gateway-<node id>`` in RocketMQ's group alphabet (``[%a-zA-Z0-9_-]``)."""
    return "gateway-" + re.sub(r"[^a-zA-Z0-9_-]", "_", node_id)[:200]


def node_tag(node_id: str) -> str:
    """The tag of messages for ``node_id`` alone (routed delivery); no ``|`` or space."""
    return "node-" + re.sub(r"[^a-zA-Z0-9_.:@-]", "_", node_id)[:200]


class RocketMQBroker(BaseBroker):
    name = "rocketmq"
    #: Seconds for one gRPC request; the client retries 3 times within a send.
    request_timeout_s = 2
    publish_timeout_s = 10.0
    #: Long-poll length of one receive, and how long a received message stays invisible
    #: to other consumers of the group before it is redelivered (we ack long before).
    await_duration_s = 5
    invisible_duration_s = 30
    batch = 32
    receivers = 2
    #: Pushes per broker message (``publish_batch``): one send, receive and ack for all.
    max_batch_pushes = 100
    #: Receive failures in a row after which the consumer is rebuilt.
    rebuild_after_failures = 3

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.endpoint = str(self.config.get("endpoint") or "127.0.0.1:8081")
        self.topic = str(self.config.get("topic") or "gateway-push")
        self.group = consumer_group(self.node_id)
        self._producer: Any = None
        self._consumer: Any = None
        self._consumer_failures = 0
        self._rebuild_lock = asyncio.Lock()
        self.consumer_error: str | None = None
        # The client logs every heartbeat at INFO into ~/logs; keep warnings only.
        logging.getLogger("rocketmq-python-client").setLevel(logging.WARNING)

    def _configuration(self) -> Any:
        from rocketmq import ClientConfiguration, Credentials

        return ClientConfiguration(
            self.endpoint, Credentials(), request_timeout=self.request_timeout_s
        )

    def _producer_started(self) -> Any:
        if self._producer is None:
            from rocketmq import Producer

            producer = Producer(self._configuration(), (self.topic,))
            producer.startup()  # returns at once even if the proxy is down; sends then fail
            self._producer = producer
        return self._producer

    async def publish(self, message: Message, *, node: str | None = None) -> None:
        tag = TAG_PUSH if isinstance(message, PushMessage) else TAG_CONTROL
        if node is not None:
            tag = node_tag(node)
        await self._send(encode(message), tag=tag, keys=[message.id])

    async def publish_batch(self, pushes: list[PushMessage], *, node: str | None = None) -> None:
        if len(pushes) == 1:
            await self.publish(pushes[0], node=node)
        else:
            await self._send(encode_batch(pushes),
                             tag=TAG_PUSH if node is None else node_tag(node),
                             keys=[push.id for push in pushes])

    async def _send(self, body: bytes, *, tag: str, keys: list[str]) -> None:
        from rocketmq import Message as RocketMessage

        outgoing = RocketMessage()
        outgoing.topic = self.topic
        outgoing.body = body
        outgoing.tag = tag
        # Each push id stays searchable in RocketMQ's tools. The client's ``keys`` setter
        # adds the one key assigned to those already set.
        for key in keys:
            outgoing.keys = key
        try:
            future = self._producer_started().send_async(outgoing)
            await asyncio.wait_for(asyncio.wrap_future(future), timeout=self.publish_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise BrokerUnavailable(f"rocketmq {self.endpoint}: {_describe(exc)}") from exc

    # --- consuming ----------------------------------------------------------------------
    def _new_consumer(self) -> Any:
        from rocketmq import FilterExpression, SimpleConsumer

        consumer = SimpleConsumer(
            self._configuration(), self.group,
            {self.topic: FilterExpression(
                f"{TAG_PUSH}||{TAG_CONTROL}||{node_tag(self.node_id)}")},
            await_duration=self.await_duration_s,
        )
        consumer.startup()
        return consumer

    def _rebuild_consumer(self) -> None:
        # The new one first: a receiver never finds no consumer.
        new = self._new_consumer()
        old, self._consumer = self._consumer, new
        if old is not None:
            try:
                old.shutdown()
            except Exception:
                logger.debug("shutting down the old consumer failed", exc_info=True)

    async def consume(self, handler: Handler) -> None:
        if self._consumer is None:
            self._consumer = self._new_consumer()
        logger.info("consuming %s on %s as group %s", self.topic, self.endpoint, self.group)
        receivers = [
            asyncio.create_task(self._receive_loop(handler), name=f"rocketmq-receive-{i}")
            for i in range(self.receivers)
        ]
        try:
            await asyncio.gather(*receivers)
        finally:
            for task in receivers:
                task.cancel()
            await asyncio.gather(*receivers, return_exceptions=True)
            self.consuming = False

    async def _receive_loop(self, handler: Handler) -> None:
        delay = 0.5
        while True:
            consumer = self._consumer
            try:
                messages = await asyncio.wrap_future(
                    consumer.receive_async(self.batch, self.invisible_duration_s)
                )
            except asyncio.CancelledError:
                if task_cancelled():
                    raise
                # Not this task: the client cancelled the receive because the consumer was
                # shut down, replaced by the other receiver's rebuild. Go on with the new one.
                continue
            except Exception as exc:
                await self._receive_failed(consumer, exc, delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.5
            self._consumer_failures = 0
            self.consumer_error = None
            self.consuming = True
            for received in messages or []:
                try:
                    await handler(bytes(received.body))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("handler failed on message %s; skipped", received.message_id)
            if messages:
                self._ack(consumer, messages)

    def _ack(self, consumer: Any, messages: list[Any]) -> None:
        """Ack a handled receive batch: one request for all, without waiting for it.

        The client acks one message per request (a signed gRPC call each, about a third of
        the node's CPU per push at a few hundred pushes a second); the protocol's
        ``AckMessageRequest`` takes many entries, so a batch is acked in one. A client
        without the pieces used here (``rpc_client``, ``sign``) acks one by one. A failed
        ack only means the messages come again after ``invisible_duration_s``: delivery
        drops them as duplicates.
        """
        rpc_client = getattr(consumer, "rpc_client", None)
        if rpc_client is None or not callable(getattr(consumer, "sign", None)):
            for received in messages:
                try:
                    # 5.1.2's ack_async returns None instead of its documented Future: the
                    # ack is sent from the client's own loop and this call does not wait.
                    consumer.ack_async(received)
                except Exception as exc:
                    logger.warning("ack failed (the message will come again): %s", exc)
            return
        from rocketmq.grpc_protocol import AckMessageRequest

        batches: dict[tuple[str, Any], list[Any]] = {}
        for received in messages:
            batches.setdefault((received.topic, received.endpoints), []).append(received)
        for (topic, endpoints), batch in batches.items():
            request = AckMessageRequest()
            request.group.name = self.group
            request.group.resource_namespace = consumer.client_configuration.namespace
            request.topic.name = topic
            request.topic.resource_namespace = consumer.client_configuration.namespace
            for received in batch:
                entry = request.entries.add()
                entry.message_id = received.message_id
                entry.receipt_handle = received.receipt_handle
            try:
                future = rpc_client.ack_message_async(
                    endpoints, request, metadata=consumer.sign(),
                    timeout=self.request_timeout_s,
                )
            except Exception as exc:
                logger.warning("ack of %d message(s) failed (they will come again): %s",
                               len(batch), exc)
                continue
            future.add_done_callback(functools.partial(_log_ack_failure, len(batch)))

    async def _receive_failed(self, consumer: Any, exc: BaseException, delay: float) -> None:
        self._consumer_failures += 1
        self.consumer_error = _describe(exc)
        metrics.bound(self.node_id).consume_errors.inc()
        if self._consumer_failures == 1:
            logger.warning("receiving from %s failed: %s", self.endpoint, self.consumer_error)
        await asyncio.sleep(delay)
        # One rebuild at a time: the receivers fail together, and a second rebuild would
        # leak the first new consumer (or shut it down under a receiver).
        async with self._rebuild_lock:
            if (self._consumer is consumer
                    and self._consumer_failures >= self.rebuild_after_failures):
                logger.info("rebuilding the consumer after %d failures",
                            self._consumer_failures)
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        None, self._rebuild_consumer
                    )
                except Exception as rebuild_exc:
                    self.consumer_error = _describe(rebuild_exc)
                self._consumer_failures = 0

    async def check(self) -> None:
        host, _, port = self.endpoint.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host or "127.0.0.1", int(port)), timeout=2
            )
            writer.close()
        except (OSError, ValueError, TimeoutError) as exc:
            raise BrokerUnavailable(f"rocketmq proxy {self.endpoint}: {_describe(exc)}") from exc
        if self.consumer_error is not None:
            raise BrokerUnavailable(f"rocketmq consumer: {self.consumer_error}")

    async def close(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None and getattr(client, "is_running", True):
                try:
                    client.shutdown()
                except Exception:
                    logger.debug("client shutdown failed", exc_info=True)
        self._consumer = self._producer = None
        self.consuming = False


def _log_ack_failure(count: int, future: Any) -> None:
    """Done callback of a batched ack (on the client's thread): say if it failed."""
    from rocketmq.grpc_protocol import Code

    try:
        response = future.result()
    except Exception as exc:
        logger.warning("ack of %d message(s) failed (they will come again): %s",
                       count, _describe(exc))
        return
    failed = [e for e in response.entries if e.status.code != Code.OK]
    if response.status.code != Code.OK or failed:
        logger.warning("ack of %d message(s) refused for %d (they will come again): %s",
                       count, len(failed) or count, response.status.message)


def _describe(exc: BaseException) -> str:
    # PushConsumer-style AttributeErrors hide the real error in __context__.
    if isinstance(exc, AttributeError) and exc.__context__ is not None:
        exc = exc.__context__
    details = getattr(exc, "details", None)
    text = details() if callable(details) else str(exc)
    return f"{type(exc).__name__}: {text}"[:300] + f" (at {time.strftime('%H:%M:%S')})"
