"""The shape of the webhooks' watcher loops (presence, settled pushes): a scan of the
database every ``interval_s`` on the node's event loop, a failing scan logged and retried at
the next round; ``on_emitted`` wakes the sender when a scan stored events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("gateway.webhooks")


class ScanLoop:
    """A subclass names ``what`` it scans and defines ``scan_once``."""

    interval_s = 1.0
    what = "scan"

    def __init__(self, *, db: Callable[..., Any], on_emitted: Callable[[], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.on_emitted = on_emitted
        self.clock = clock

    async def scan_once(self) -> Any:
        raise NotImplementedError

    async def run(self) -> None:
        while True:
            try:
                await self.scan_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s scan failed; next one in %.0f s", self.what,
                                 self.interval_s)
            await asyncio.sleep(self.interval_s)
