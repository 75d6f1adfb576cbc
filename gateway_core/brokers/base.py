"""The broker interface: how a push travels from the node that accepted it to every node.

Guarantees every implementation states against these:

- ``publish`` (and ``publish_batch``) returns only once the broker holds the message
  (RocketMQ: the send receipt; ``local``: handed to this process's consumers). Otherwise
  it raises ``BrokerUnavailable`` and the caller, the relay, keeps the push (every push
  of the batch) and tries again; nothing is dropped here.
- ``consume`` hands every broadcast message (published with ``node=None``) to every node,
  and every message published for one node (``node="<id>"``: routed delivery) to that
  node only, at least once: duplicates and redelivered history are possible, so the
  delivery side skips ids it has seen and messages published before the node started. No
  ordering is promised across pushes. A node always reads its own destination besides
  the broadcast one, whatever its ``GATEWAY_ROUTING``, so that routed publishers may
  reach it during a rolling upgrade. A message for a node that is gone is read by no one
  (the RocketMQ tag or Redis stream of a dead node): the presence map routes only to live
  nodes, and kept pushes wait in the database for their users' next connection.
- A handler that raises is logged and the message is skipped, never retried forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from gateway_core.messages import Message, PushMessage

#: Receives the raw bytes of one broker message (decoding belongs to the delivery side), or,
#: from the in-process ``local`` broker, the message itself: it crosses no wire, and its
#: JSON round trip was a seventh of the node's event-loop time under load.
Handler = Callable[[bytes | Message], Awaitable[None]]


class BrokerUnavailable(Exception):
    """The broker did not take the message (down, unreachable, timed out)."""


class BaseBroker:
    """A pluggable broker, loaded from ``gateway_core.brokers.BACKENDS`` by name."""

    name = "base"
    #: Whether the relay should publish a window of messages at once (network brokers: many
    #: round trips in flight) or one after another (``local``: nothing to wait for).
    publish_concurrently = True

    def __init__(self, *, node_id: str, config: dict[str, Any] | None = None) -> None:
        self.node_id = node_id
        self.config = config or {}
        #: True once ``consume`` has reached the broker (and until it stops): /readyz
        #: reports a node whose consumer is not receiving as not ready.
        self.consuming = False

    async def start(self) -> None:
        """Connect; may be called again after ``close``."""

    #: Most pushes ``publish_batch`` puts in one broker message (1: one message per push).
    max_batch_pushes = 1

    async def publish(self, message: Message, *, node: str | None = None) -> None:
        """Publish to every node (``node`` None) or to one node's own destination."""
        raise NotImplementedError(".publish() must be overridden")

    async def publish_batch(self, pushes: list[PushMessage], *, node: str | None = None) -> None:
        """Publish these pushes, all or none (``BrokerUnavailable``); brokers with
        ``max_batch_pushes`` > 1 send them as one ``encode_batch`` message."""
        for push in pushes:
            await self.publish(push, node=node)

    async def consume(self, handler: Handler) -> None:
        """Feed every message to ``handler`` until cancelled; survive broker outages."""
        raise NotImplementedError(".consume() must be overridden")

    async def check(self) -> None:
        """Raise ``BrokerUnavailable`` unless the broker answers now (for /readyz)."""
        raise NotImplementedError(".check() must be overridden")

    async def close(self) -> None:
        """Release connections; in-flight ``publish`` calls may fail."""


def task_cancelled() -> bool:
    """Whether the running task itself is being cancelled (not just a future it awaited)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0
