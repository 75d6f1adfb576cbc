"""The client WebSocket consumer: thin, and lean on the hot path.

It follows Channels' consumer shape (``as_asgi``, one method per ASGI event) but skips two
per-frame costs of ``AsyncWebsocketConsumer``: it joins no channel layer (pushes reach it
in-process through the registry) and does not run ``aclose_old_connections`` through a
thread before every frame (it never touches the database).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from channels.consumer import AsyncConsumer

from gateway_core import logs, metrics
from gateway_core.conf import gateway_settings
from gateway_core.tokens import Claims, InvalidToken, UnknownApp, decode_token
from sessions_app import frames
from sessions_app.close_codes import CloseCode
from sessions_app.flow import QUEUED, WRITE, SendBuffer, UnboundedSendBuffer, send_buffer_for
from sessions_app.frames import push_id_of
from sessions_app.hub import INTERNAL_ERROR, Hub
from sessions_app.registry import ChannelSession

logger = logging.getLogger("gateway.sessions")

#: The close code recorded for a connection that ended without a close frame.
ABNORMAL_CLOSURE = 1006


class SessionNode(Protocol):
    """What a connection needs of the node it is handed (``gateway_node.node.GatewayNode``)."""

    node_id: str
    hub: Hub

    async def ensure_started(self) -> None:
        """Start the node's loops if they are not running yet."""
        ...

    def acked(self, push_id: str, session: ChannelSession) -> None:
        """A session acknowledged a push this node delivered to it."""
        ...

    async def recover(self, session: ChannelSession, since: str | None) -> Recovered:
        """What the session gets before any live push: its user's kept pushes (and with
        ``since``, the app's kept broadcasts after it), PROTOCOL.md section 6."""
        ...

    def replayed(self, session: ChannelSession, push_ids: list[str]) -> None:
        """Count the targeted pushes a replay wrote to the session."""
        ...

    def app_secrets(self, app: str) -> tuple[str, ...] | None:
        """The secrets that verify tokens of ``app``; None for an app not known here."""
        ...

    def app_connection_allowed(self, app: str) -> bool:
        """Whether ``app`` may take one more connection (its ``max_connections``)."""
        ...

    async def reload_apps(self, *, on_miss: bool = False) -> None:
        """Reload the apps from the database (on a miss: at most once a second)."""
        ...


class Recovered(Protocol):
    """What ``SessionNode.recover`` answers (``push_app.recipients.Recovery``)."""

    @property
    def pushes(self) -> Sequence[Any]:
        """Each with ``id``, ``frame`` (text) and ``targeted``, in accept order."""
        ...

    @property
    def complete(self) -> bool | None:
        """Whether ``since`` was known; None without one."""
        ...


class GatewayConsumer(AsyncConsumer):
    """One client connection. ``GatewayConsumer.as_asgi(node=...)``: ``node`` returns this
    process's node (the ASGI builder in ``gateway_node.asgi`` hands it)."""

    node: SessionNode
    session: ChannelSession | None

    def __init__(self, *, node: Callable[[], SessionNode]) -> None:
        self.node_provider = node

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self.base_send = send
        self.node = self.node_provider()
        self.metrics = metrics.bound(self.node.node_id)
        await self.node.ensure_started()
        self.session = None
        self.closed = False
        self.buffer: SendBuffer = UnboundedSendBuffer(send)
        #: While the session's replay is read and sent: what else was to be written to it
        #: (live pushes), written after the replay so that it comes first.
        self.held: list[tuple[str, bytes | None]] | None = None
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    await self.websocket_receive(message)
                elif kind == "websocket.connect":
                    await self.websocket_connect(message)
                elif kind == "websocket.disconnect":
                    self.websocket_disconnect(message)
                    return
        except Exception:
            # A failing handler ends this connection only: the server logs the error and
            # closes it with 1011. The session must not outlive it as a ghost that shows
            # online and takes pushes into a dead connection.
            self.metrics.session_failures["handler"].inc()
            self._lost(INTERNAL_ERROR)
            raise
        finally:
            # Cancelled by the server, or anything else: never leave the session behind.
            self._lost(ABNORMAL_CLOSURE)

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        # Accept first, then close: browsers only see a close code after a handshake.
        await self.base_send({"type": "websocket.accept"})
        if self.node.hub.draining:
            await self._close(CloseCode.DRAINING, CloseCode.DRAINING.reason)
            return
        try:
            claims = await self._authenticate(frames.token_from_scope(self.scope))
        except InvalidToken as exc:
            self.metrics.auth_failures.inc()
            await self._close(CloseCode.UNAUTHORIZED, str(exc))
            return
        if not self.node.app_connection_allowed(claims.app_id):
            await self._close(CloseCode.APP_CONNECTION_LIMIT,
                              CloseCode.APP_CONNECTION_LIMIT.reason)
            return
        self.buffer = send_buffer_for(
            self.base_send, max_bytes=gateway_settings.max_send_buffer_bytes
        )
        now = time.time()
        client = self.scope.get("client") or ("", 0)
        self.session = ChannelSession(
            session_id=uuid.uuid4().hex,
            user_id=claims.user_id,
            connection=self,
            connected_at=now,
            last_seen=now,
            remote_addr=str(client[0] or ""),
            user_agent=frames.header(self.scope, b"user-agent"),
            meta=claims.meta,
            app_id=claims.app_id,
            expires_at=claims.expires_at,
        )
        # This connection's task logs with its session id from here on.
        logs.session_id_var.set(self.session.session_id)
        # Registered before the inbox is read, holding live pushes meanwhile: a kept push
        # is then either in the replay or arrives live after it, never lost between them.
        self.held = []
        await self.node.hub.open(
            self.session, max_per_user=gateway_settings.max_connections_per_user
        )
        since = frames.since_from_scope(self.scope)
        recovered = await self.node.recover(self.session, since)
        await self._replay(claims.user_id, since, recovered)

    async def _replay(self, user_id: str, since: str | None, recovered: Recovered) -> None:
        """The welcome, the replayed pushes, then what was held meanwhile (minus the
        pushes the replay already sent)."""
        session = self.session
        assert session is not None
        pushes = recovered.pushes
        recovery = None if since is None else {
            "since": since, "complete": bool(recovered.complete), "replayed": len(pushes)}
        await self._write(frames.welcome(
            session_id=session.session_id,
            node_id=self.node.node_id,
            user_id=user_id,
            interval_s=gateway_settings.heartbeat_interval_s,
            timeout_s=gateway_settings.heartbeat_timeout_s,
            recovery=recovery,
        ))
        replayed: set[str] = set()
        targeted: list[str] = []
        for push in pushes:
            if not await self._write(push.frame):
                break
            session.received(push.id)
            replayed.add(push.id)
            if push.targeted:
                targeted.append(push.id)
        if targeted:
            self.node.replayed(session, targeted)
        held, self.held = self.held or [], None
        for frame, wire in held:
            if push_id_of(frame) not in replayed:
                await self._write(frame, wire)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        session = self.session
        if session is None or self.closed:
            return
        text: str | None = message.get("text")
        raw: bytes = message.get("bytes") or b""
        max_frame = gateway_settings.max_frame_bytes
        if text is not None:
            # Characters are at most 4 bytes: encode only when the frame might be too big.
            size = len(text) if len(text) * 4 <= max_frame else len(text.encode())
        else:
            size = len(raw)
        hub = self.node.hub
        if size > max_frame:
            await hub.close(session, CloseCode.FRAME_TOO_BIG)
            return
        now = time.time()
        reply: str
        if text is None:
            kind, reply = "binary", frames.error("binary frames are not supported; send JSON text")
        else:
            try:
                frame = frames.parse(text)
            except frames.BadFrame as exc:
                kind, reply = "bad", frames.error(str(exc))
            else:
                kind = frame["type"]
                if kind == "ping":
                    reply = frames.pong(int(now * 1000))
                elif kind == "refresh":
                    reply = self._refresh(session, frame["token"])
                elif session.take_ack(frame["id"]):
                    # The first ack of a push this connection got is free of the frame
                    # budget, so that a client may ack every push (PROTOCOL.md section 1).
                    session.last_seen = now
                    self.metrics.frame(kind)
                    self.node.acked(frame["id"], session)
                    return
                else:
                    kind, reply = "bad_ack", frames.error(
                        "no unacked push with this id was sent to this connection",
                        code="bad_ack",
                    )
        self.metrics.frame(kind)
        within_budget = session.count_frame(
            now, max_per_minute=gateway_settings.max_frames_per_minute, alive=text is not None,
        )
        if not within_budget:
            await hub.close(session, CloseCode.TOO_MANY_FRAMES)
            return
        await self.send_frame(reply)

    async def _authenticate(self, token: str) -> Claims:
        """The token's claims, verified with its app's secrets. A token naming an app this
        node does not know yet (made a moment ago) gets one reload of the apps."""
        try:
            return decode_token(token, secrets_for=self.node.app_secrets)
        except UnknownApp:
            try:
                await self.node.reload_apps(on_miss=True)
            except Exception:
                # The database is unreachable: the app stays unknown here (4001), and
                # the node's own reload will find it once the database answers.
                logger.warning(
                    "reloading apps for an unknown kid failed", exc_info=True)
            return decode_token(token, secrets_for=self.node.app_secrets)

    def _refresh(self, session: ChannelSession, token: str) -> str:
        """A ``refresh`` frame (PROTOCOL.md section 6): a valid token of the same app and
        user moves the session's expiry; anything else keeps the old one."""
        try:
            claims = decode_token(token, secrets_for=self.node.app_secrets)
        except InvalidToken as exc:
            return frames.error(f"token refused: {exc}", code="bad_token")
        if claims.app_id != session.app_id or claims.user_id != session.user_id:
            return frames.error("the token is for another user", code="bad_token")
        session.expires_at = claims.expires_at
        return frames.refreshed(claims.expires_at)

    def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self._lost(int(message.get("code") or ABNORMAL_CLOSURE))

    def _lost(self, code: int) -> None:
        """The connection is gone (or going): no more writes, and the session is forgotten
        at once (a no-op when it already was)."""
        self.closed = True
        if self.session is not None:
            self.node.hub.forget(self.session, code=code)

    # Connection (what the registry and the hub call) ---------------------------------
    async def send_frame(self, frame: str, wire: bytes | None = None) -> bool:
        held = self.held
        if held is not None and not self.closed:
            held.append((frame, wire))
            return True
        return await self._write(frame, wire)

    async def _write(self, frame: str, wire: bytes | None = None) -> bool:
        if self.closed:
            return False
        verdict = self.buffer.offer(frame)
        if verdict == WRITE:
            if wire is not None and self.buffer.write_wire(wire):
                return True
            try:
                await self.base_send({"type": "websocket.send", "text": frame})
            except Exception:
                # Whatever the server raises, this connection can take no more frames:
                # uvicorn's ClientDisconnected and autobahn's Disconnected both mean the
                # client left while its disconnect event is still on its way here. Raising
                # would stop the delivery loop that writes to every other session too.
                self._lost(ABNORMAL_CLOSURE)
                return False
            return True
        if verdict == QUEUED:
            return True
        if self.session is not None:
            await self.node.hub.close(self.session, CloseCode.TOO_SLOW)
        return False

    async def close(self, code: CloseCode) -> None:
        await self._close(code, code.reason)

    async def abort(self) -> None:
        self._lost(INTERNAL_ERROR)
        with contextlib.suppress(Exception):
            # A plain close (1000): servers refuse 1011 from the application.
            await self.base_send({"type": "websocket.close"})

    async def _close(self, code: CloseCode, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self.buffer.close(
                {"type": "websocket.close", "code": int(code), "reason": reason}
            )
        except Exception:
            # The connection is already gone: there is no one left to tell.
            self._lost(ABNORMAL_CLOSURE)
