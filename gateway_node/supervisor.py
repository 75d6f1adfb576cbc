"""Supervision of the node's long-running loops: a loop that ends is restarted.

A node's loops (the broker consumer or the channel-layer listener that feeds delivery, the
relay, housekeeping) are meant to run until the node stops. If one ends anyway, by an
exception nobody foresaw or by returning, the node must not go on answering 202 while it
delivers nothing: the supervisor logs it, counts it (``gateway_loop_restarts_total``),
marks it down (``gateway_loop_running`` 0, and ``/healthz`` 503 for a delivery loop) and
starts it again after a back-off, as channels_redis' receive loop and Erlang supervisors
do. Cancellation is the one way to end a supervised loop: the node's ``stop``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway_core import metrics

logger = logging.getLogger("gateway.supervisor")

LoopFactory = Callable[[], Awaitable[Any]]


class Supervised:
    """One loop under supervision: run ``factory()``, and again whenever it ends."""

    #: Back-off before a restart: doubles from ``first_backoff_s`` up to ``max_backoff_s``,
    #: and starts over once a run lasted ``healthy_after_s``.
    first_backoff_s = 0.5
    max_backoff_s = 30.0
    healthy_after_s = 60.0

    def __init__(self, name: str, factory: LoopFactory, *, node_id: str,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 clock: Callable[[], float] | None = None) -> None:
        self.name = name
        self.factory = factory
        self.sleep = sleep
        self.clock = clock
        self.running = False
        self.restarts = 0
        self._restarts = metrics.LOOP_RESTARTS.labels(node_id, name)
        self._running = metrics.LOOP_RUNNING.labels(node_id, name)
        self._running.set(0)

    def _now(self) -> float:
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    async def run(self) -> None:
        backoff = self.first_backoff_s
        while True:
            started = self._now()
            self._set_running(True)
            try:
                await self.factory()
            except asyncio.CancelledError:
                self._set_running(False)
                raise
            except Exception:
                logger.exception("loop %s failed; restarting it in %.1f s", self.name, backoff)
            else:
                logger.error("loop %s ended by itself; restarting it in %.1f s",
                             self.name, backoff)
            self._set_running(False)
            self.restarts += 1
            self._restarts.inc()
            if self._now() - started >= self.healthy_after_s:
                backoff = self.first_backoff_s
            await self.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _set_running(self, running: bool) -> None:
        self.running = running
        self._running.set(1 if running else 0)
