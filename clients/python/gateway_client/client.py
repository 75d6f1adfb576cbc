"""``GatewayClient``: one logical WebSocket connection to the gateway, kept up across
reconnects, following PROTOCOL.md section 8.

- ``ping`` at the interval the ``welcome`` names; a connection silent past its timeout is
  dropped and reconnected.
- Reconnects with full-jitter backoff (0.5 s doubling to 30 s, reset after 30 s open); after
  4012 at once; after 4001/4011 with a new token from ``get_token``.
- 4009 and 4010 (and 4001/4011 with a bare token) stop ``run()``; ``close_code`` holds them.
- Every connection carries ``since``: the last push id whose handler returned.
- Pushes are handled one at a time in arrival order and acked after the handler returns. A
  push id already handled (a bounded memory) is acked again, never handed out twice.
- With ``get_token``, the token is refreshed on the open connection before it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random as _random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection

from gateway_client.policy import Backoff, CloseCode, RecentIds, refresh_delay_s, token_exp

logger = logging.getLogger("gateway_client")

State = Literal["connecting", "open", "closed"]
PushHandler = Callable[["Push"], Awaitable[None] | None]
TokenSource = Callable[[], Awaitable[str]]

#: Close codes after which the client stops for good (with a bare token, 4001/4011 too).
STOP_CODES = frozenset({CloseCode.REPLACED, CloseCode.DISCONNECTED})
TOKEN_CODES = frozenset({CloseCode.UNAUTHORIZED, CloseCode.TOKEN_EXPIRED})
#: A connection that ends without a close frame (or never opened).
ABNORMAL = 1006


class GatewayClosed(ConnectionError):
    """The gateway closed the connection with a code that stops the client (reported to
    ``on_error`` handlers); ``code`` is the close code."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"closed by the gateway with {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Push:
    """A push as the application sees it."""

    id: str
    topic: str | None
    data: Any
    ts: int
    redelivered: bool = False


@dataclass
class _Connection:
    ws: ClientConnection
    welcomed: bool = False
    opened_at: float = 0.0
    last_frame_at: float = 0.0
    heartbeat: asyncio.Task[None] | None = None
    refresh: asyncio.Task[None] | None = None


class GatewayClient:
    """``GatewayClient(url, token=…)`` or ``GatewayClient(url, get_token=async_callable)``.

    Register handlers with ``on_push`` (and optionally ``on_state``, ``on_error``), then
    ``await run()``: it returns after ``close()``, or after 4009/4010 (then ``close_code``
    says which). ``clock``, ``sleep`` and ``random`` are seams for tests.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: TokenSource | None = None,
        since: str | None = None,
        dedupe_size: int = 10_000,
        refresh_margin_s: float = 10.0,
        open_timeout_s: float = 10.0,
        connect_kwargs: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
        connect: Callable[..., Awaitable[ClientConnection]] | None = None,
    ) -> None:
        if token is None and get_token is None:
            raise ValueError("GatewayClient needs token= or get_token=")
        self.url = url
        self.get_token = get_token
        self.refresh_margin_s = refresh_margin_s
        self.open_timeout_s = open_timeout_s
        self.connect_kwargs = dict(connect_kwargs or {})
        self.clock = clock
        self.sleep = sleep
        self.backoff = Backoff(random=random)
        self.recent = RecentIds(dedupe_size)
        #: The last push id whose handler returned: ``since`` on every connection.
        self.last_id: str | None = since
        #: The close code that stopped ``run()`` (4009, 4010; 4001/4011 with a bare token).
        self.close_code: int | None = None
        #: The last ``welcome`` frame (with ``recovery`` once the server resumes).
        self.welcome: dict[str, Any] | None = None
        self.state: State = "closed"
        self._connect = connect or websockets.connect
        self._token = token
        self._push_handlers: list[PushHandler] = []
        self._state_handlers: list[Callable[[State], None]] = []
        self._error_handlers: list[Callable[[Exception], None]] = []
        self._welcome_handlers: list[Callable[[dict[str, Any]], None]] = []
        self._queue: asyncio.Queue[tuple[ClientConnection, Push] | None] = asyncio.Queue()
        self._conn: _Connection | None = None
        self._stopped = False
        self._closing = asyncio.Event()

    # --- registration ------------------------------------------------------------------
    def on_push(self, handler: PushHandler) -> PushHandler:
        """Decorator: ``handler(push)`` (async or not) runs for each new push; the push is
        acked once it returns. A handler that raises leaves the push unacked."""
        self._push_handlers.append(handler)
        return handler

    def on_state(self, handler: Callable[[State], None]) -> Callable[[State], None]:
        self._state_handlers.append(handler)
        return handler

    def on_error(self, handler: Callable[[Exception], None]) -> Callable[[Exception], None]:
        self._error_handlers.append(handler)
        return handler

    def on_welcome(
        self, handler: Callable[[dict[str, Any]], None],
    ) -> Callable[[dict[str, Any]], None]:
        """Decorator: ``handler(frame)`` for each ``welcome`` (its ``recovery`` on resume)."""
        self._welcome_handlers.append(handler)
        return handler

    # --- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        """Connect and stay connected until ``close()`` or a close code that says stop."""
        self._stopped = False
        self._closing.clear()
        self.close_code = None
        self.backoff.attempt = 0
        worker = asyncio.create_task(self._work())
        try:
            while not self._stopped:
                delay = await self._one_connection()
                if delay is None or self._stopped:
                    break
                if delay > 0:
                    await self._pause(delay)
        finally:
            self._stopped = True
            if self._closing.is_set():
                worker.cancel()
            else:
                self._queue.put_nowait(None)  # handle what already arrived, then stop
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            self._set_state("closed")

    async def close(self) -> None:
        """Stop for good: ``run()`` returns; the open connection closes with 1000."""
        self._stopped = True
        self._closing.set()
        conn = self._conn
        if conn is not None:
            await conn.ws.close(1000)

    # --- one connection ----------------------------------------------------------------
    async def _one_connection(self) -> float | None:
        """Open, serve and lose one connection; the delay before the next one, or None to
        stop."""
        self._set_state("connecting")
        try:
            token = await self._token_for_connect()
        except Exception as exc:
            self._report(exc)
            return self.backoff.next()
        try:
            ws = await asyncio.wait_for(
                self._connect(self._url(token), open_timeout=None, ping_interval=None,
                              close_timeout=2, **self.connect_kwargs),
                self.open_timeout_s,
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake,
                websockets.InvalidURI) as exc:
            logger.info("gateway connection failed: %r", exc)
            return self.backoff.next()
        conn = _Connection(ws=ws, last_frame_at=self.clock())
        self._conn = conn
        try:
            if self._stopped:
                await ws.close(1000)
            await self._serve(conn)
        finally:
            self._conn = None
            for task in (conn.heartbeat, conn.refresh):
                if task is not None:
                    task.cancel()
        code = ws.close_code if ws.close_code is not None else ABNORMAL
        return self._after_close(code, ws.close_reason or "", conn)

    def _after_close(self, code: int, reason: str, conn: _Connection) -> float | None:
        if self._stopped:
            return None
        open_s = self.clock() - conn.opened_at if conn.welcomed else 0.0
        self.backoff.closed_after(open_s)
        bare = self.get_token is None
        if code in STOP_CODES or (bare and code in TOKEN_CODES):
            self.close_code = code
            self._report(GatewayClosed(code, reason))
            return None
        if code in TOKEN_CODES:
            self._token = None  # ask the application for a new one
        if code == CloseCode.DRAINING and conn.welcomed:
            return 0.0
        return self.backoff.next()

    async def _serve(self, conn: _Connection) -> None:
        try:
            async for raw in conn.ws:
                conn.last_frame_at = self.clock()
                try:
                    frame = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(frame, dict):
                    await self._on_frame(conn, frame)
        except websockets.ConnectionClosed:
            pass

    async def _on_frame(self, conn: _Connection, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "push" and isinstance(frame.get("id"), str):
            push = Push(id=frame["id"], topic=frame.get("topic"), data=frame.get("data"),
                        ts=int(frame.get("ts") or 0), redelivered=bool(frame.get("redelivered")))
            self._queue.put_nowait((conn.ws, push))
        elif kind == "welcome":
            self.welcome = frame
            conn.welcomed = True
            conn.opened_at = self.clock()
            heartbeat = frame.get("heartbeat") or {}
            interval_s = float(heartbeat.get("interval") or 25)
            timeout_s = float(heartbeat.get("timeout") or 60)
            conn.heartbeat = asyncio.create_task(self._beat(conn, interval_s, timeout_s))
            exp = token_exp(self._token) if self._token else None
            if exp is not None and self.get_token is not None:
                self._schedule_refresh(conn, exp)
            self._set_state("open")
            for handler in list(self._welcome_handlers):
                try:
                    handler(frame)
                except Exception:
                    logger.exception("welcome handler failed")
        elif kind == "refreshed" and isinstance(frame.get("exp"), int | float):
            self._schedule_refresh(conn, float(frame["exp"]))
        elif kind == "error" and frame.get("code") != "bad_ack":
            self._report(RuntimeError(f"gateway error {frame.get('code')}: {frame.get('detail')}"))

    async def _beat(self, conn: _Connection, interval_s: float, timeout_s: float) -> None:
        while True:
            await self.sleep(interval_s)
            if self.clock() - conn.last_frame_at > timeout_s:
                # Nothing from the server for the whole timeout: the connection is dead.
                logger.info("no frame from the gateway for %.0f s: reconnecting", timeout_s)
                await conn.ws.close(1000)
                return
            with contextlib.suppress(websockets.ConnectionClosed):
                await conn.ws.send('{"type":"ping"}')

    def _schedule_refresh(self, conn: _Connection, exp_s: float) -> None:
        if conn.refresh is not None:
            conn.refresh.cancel()
        conn.refresh = asyncio.create_task(self._refresh(conn, exp_s))

    async def _refresh(self, conn: _Connection, exp_s: float) -> None:
        assert self.get_token is not None
        await self.sleep(refresh_delay_s(exp_s, self.clock(), margin_s=self.refresh_margin_s))
        try:
            token = await self.get_token()
        except Exception as exc:
            self._report(exc)
            return
        self._token = token
        with contextlib.suppress(websockets.ConnectionClosed):
            await conn.ws.send(json.dumps({"type": "refresh", "token": token}))

    async def _token_for_connect(self) -> str:
        token = self._token
        if token is not None:
            exp = token_exp(token)
            if self.get_token is None or exp is None or exp - self.clock() > 1:
                return token
        assert self.get_token is not None
        self._token = await self.get_token()
        return self._token

    def _url(self, token: str) -> str:
        parts = urlsplit(self.url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("token", "since")]
        query.append(("token", token))
        if self.last_id:
            query.append(("since", self.last_id))
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def _pause(self, delay_s: float) -> None:
        """Wait ``delay_s``, or less if ``close()`` is called meanwhile."""
        sleeper = asyncio.ensure_future(self.sleep(delay_s))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({sleeper, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            closing.cancel()

    # --- pushes ------------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            await self._handle(*item)

    async def _handle(self, ws: ClientConnection, push: Push) -> None:
        if push.id in self.recent:
            await self._ack(ws, push.id)  # a repeat: settle it again, never hand it out twice
            return
        try:
            for handler in list(self._push_handlers):
                result = handler(push)
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:
            logger.exception("push handler failed for %s; the push stays unacked", push.id)
            self._report(exc)
            return
        self.recent.add(push.id)
        self.last_id = push.id
        await self._ack(ws, push.id)

    @staticmethod
    async def _ack(ws: ClientConnection, push_id: str) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(json.dumps({"type": "ack", "id": push_id}))

    # --- events ------------------------------------------------------------------------
    def _set_state(self, state: State) -> None:
        if state == self.state:
            return
        self.state = state
        for handler in list(self._state_handlers):
            try:
                handler(state)
            except Exception:
                logger.exception("state handler failed")

    def _report(self, exc: Exception) -> None:
        for handler in list(self._error_handlers):
            try:
                handler(exc)
            except Exception:
                logger.exception("error handler failed")
