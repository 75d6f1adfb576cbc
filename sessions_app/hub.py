"""The hub: what a node does with its sessions (open, close, sweep, drain).

It wraps the registry (the data) with the side effects every change brings: the
database recorder, metrics, and the close frame to the client. Consumers, the delivery
side and the sweep all close sessions through ``close`` so each close is counted once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from gateway_core import metrics
from sessions_app.close_codes import CloseCode
from sessions_app.recorder import SessionRecorder
from sessions_app.registry import ChannelSession, SessionManager

logger = logging.getLogger("gateway.sessions")

#: WebSocket's own close code for a server failure, as recorded for a dropped session.
INTERNAL_ERROR = 1011


class Hub:
    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(
        self, *, node_id: str, registry: SessionManager, recorder: SessionRecorder
    ) -> None:
        self.node_id = node_id
        self.registry = registry
        self.recorder = recorder
        self.draining = False
        self.metrics = metrics.bound(node_id)
        #: Told of every session opened, awaited before ``open`` returns (so before the
        #: session's replay is read): the cluster's presence map (routed delivery).
        self.on_open: Callable[[ChannelSession], Awaitable[None]] | None = None
        #: Told of every session forgotten, whatever closed it; must not block.
        self.on_close: Callable[[ChannelSession], None] | None = None

    async def open(self, session: ChannelSession, *, max_per_user: int) -> None:
        """Register a session; close the user's oldest past the cap with 4009."""
        evicted = self.registry.register(session, max_per_user=max_per_user)
        self.recorder.opened(session)
        for old in evicted:
            self._forgotten(old)
        if self.on_open is not None:
            await self.on_open(session)
        self.metrics.app(session.app_id).connects.inc()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("session opened for user %s", session.user_id,
                         extra={"session_id": session.session_id})
        for old in evicted:
            await self._closed(old, CloseCode.REPLACED)

    async def close(self, session: ChannelSession, code: CloseCode) -> None:
        """Forget a session and send it ``code``; a no-op if it is already gone."""
        if self.registry.unregister(session):
            self._forgotten(session)
            await self._closed(session, code)

    async def drop(self, session: ChannelSession) -> None:
        """Forget a session whose connection failed, and abort that connection.

        Counted as 1011 (the protocol's "internal error"): the client gets no application
        close code, since the connection may not carry one any more.
        """
        if self.registry.unregister(session):
            self._forgotten(session)
            self.recorder.closed(session, code=INTERNAL_ERROR, at=self.clock())
            self.metrics.disconnect(INTERNAL_ERROR, session.app_id)
        try:
            await session.connection.abort()
        except Exception:
            logger.exception("aborting session %s failed", session.session_id,
                             extra={"session_id": session.session_id})

    def forget(self, session: ChannelSession, *, code: int) -> None:
        """The client went away by itself (``websocket.disconnect``)."""
        if self.registry.unregister(session):
            self._forgotten(session)
            self.recorder.closed(session, code=code, at=self.clock())
            self.metrics.disconnect(code, session.app_id)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("session closed by the client (%d)", code,
                             extra={"session_id": session.session_id})

    def _forgotten(self, session: ChannelSession) -> None:
        if self.on_close is not None:
            try:
                self.on_close(session)
            except Exception:
                logger.exception("on_close failed for session %s", session.session_id,
                                 extra={"session_id": session.session_id})

    async def _closed(self, session: ChannelSession, code: CloseCode) -> None:
        self.recorder.closed(session, code=int(code), at=self.clock())
        self.metrics.disconnect(int(code), session.app_id)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("session closed with %d", code, extra={"session_id": session.session_id})
        try:
            await session.connection.close(code)
        except Exception:
            logger.exception("closing session %s with %d failed", session.session_id, code,
                             extra={"session_id": session.session_id})

    async def sweep(self, *, timeout_s: float, now: float | None = None) -> int:
        """Close every session silent for ``timeout_s`` with 4008, and every session whose
        token's ``exp`` passed without a refresh with 4011."""
        expired = self.registry.expired(timeout_s=timeout_s, now=now)
        for session in expired:
            self.metrics.app(session.app_id).heartbeat_timeouts.inc()
            await self.close(session, CloseCode.HEARTBEAT_TIMEOUT)
        lapsed = self.registry.token_expired(now=now)
        for session in lapsed:
            await self.close(session, CloseCode.TOKEN_EXPIRED)
        return len(expired) + len(lapsed)

    async def drain(self) -> int:
        """Close every session with 4012 so clients reconnect elsewhere; refuse new ones."""
        self.draining = True
        sessions = self.registry.all_sessions()
        for session in sessions:
            await self.close(session, CloseCode.DRAINING)
        return len(sessions)
