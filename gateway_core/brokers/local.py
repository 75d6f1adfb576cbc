"""The ``local`` broker: one process, no service, for the embedded default and tests.

Like Django's locmem mail backend it keeps an ``outbox`` of what was published, which tests
read. Messages are handed over as they are (frozen dataclasses), never encoded. Guarantee:
a published message reaches every consumer of this process exactly once, in order, whatever
its destination node; nothing
survives the process, and other processes never see it.
"""

from __future__ import annotations

import asyncio

from gateway_core.brokers.base import BaseBroker, BrokerUnavailable, Handler
from gateway_core.messages import Message


class LocalBroker(BaseBroker):
    name = "local"
    publish_concurrently = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.outbox: list[Message] = []
        self.available = True  # tests flip this to play an outage
        self._queues: list[asyncio.Queue[Message]] = []

    async def publish(self, message: Message, *, node: str | None = None) -> None:
        # One process: every destination is this process's consumers.
        if not self.available:
            raise BrokerUnavailable("local broker switched off")
        self.outbox.append(message)
        del self.outbox[:-1000]  # keep the last thousand for inspection, not forever
        for queue in self._queues:
            queue.put_nowait(message)

    async def consume(self, handler: Handler) -> None:
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._queues.append(queue)
        self.consuming = True
        try:
            while True:
                await handler(await queue.get())
        finally:
            self._queues.remove(queue)
            self.consuming = bool(self._queues)

    async def check(self) -> None:
        if not self.available:
            raise BrokerUnavailable("local broker switched off")
