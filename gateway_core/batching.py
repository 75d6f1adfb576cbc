"""Coalesce calls made at the same moment into one round trip.

A reconnect storm makes thousands of sessions connect within a second, each needing a
Redis write (the presence map) and a database read (its inbox). One round trip each took
a connection of redis-py's pool apiece (it refuses past 100) and a hand-off to the
database thread apiece (the thread's wake-up costing more than the read). A ``Batcher``
queues the calls; one task writes them ``max_items`` at a time with ``run_batch`` while
the next ones gather: an idle node sends a lone call at once, a busy one sends the calls
that arrived while the last batch was out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
#: ``run_batch(items)``: one result (or the exception that item alone raised) per item, in
#: order; raising fails every item of the batch.
BatchRunner = Callable[[Sequence[T]], Awaitable[Sequence["R | BaseException"]]]


class Batcher(Generic[T, R]):
    def __init__(self, run_batch: BatchRunner[T, R], *, max_items: int = 500,
                 name: str = "batcher") -> None:
        self.run_batch = run_batch
        self.max_items = max_items
        self.name = name
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def call(self, item: T) -> R:
        """``item``'s result, once the batch it went in has run."""
        answer: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        # Read here, so that a caller who gave up leaves no "never retrieved" warning.
        answer.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append((item, answer))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name=self.name)
        # Shielded: a caller that gives up leaves its item to the batch, not the batch.
        return await asyncio.shield(answer)

    async def _drain(self) -> None:
        while self._queue:
            batch = self._queue[:self.max_items]
            del self._queue[:self.max_items]
            try:
                results = await self.run_batch([item for item, _ in batch])
            except BaseException as exc:
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, answer), result in zip(batch, results, strict=True):
                if answer.done():
                    continue
                if isinstance(result, BaseException):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)
