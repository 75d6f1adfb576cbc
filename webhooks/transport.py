"""How the sender POSTs: keep-alive HTTP/1.1 connections, pooled per origin.

``H11Poster`` is the one nodes use: h11 (httpx's own HTTP/1.1 parser) over asyncio
streams, TLS from the default context, connections reused while the receiver keeps them
alive. httpx's pool costs about a millisecond of CPU per request and slows down past a few
concurrent requests (a few hundred calls a second on two cores), below the contract's
thousands a second. ``HttpxPoster`` wraps an ``httpx.AsyncClient``: the tests' seam
(``httpx.MockTransport``).

A poster answers ``(status, excerpt)``: the status and the start of the body, read up to
``max_body_bytes`` and no further (a longer answer closes the connection instead of being
read). Timeouts are the caller's (the sender wraps each call in 10 s).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

import h11
import httpx

EXCERPT_BYTES = 500


class Poster(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        ...

    async def aclose(self) -> None: ...


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.writer.close()


Origin = tuple[str, str, int]


class H11Poster:
    #: Idle connections kept per origin (each endpoint lane has at most its concurrency).
    max_idle = 64
    #: An answer longer than this is not read to its end: the connection is closed.
    max_body_bytes = 64 * 1024

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None,
                 user_agent: str = "push-gateway-webhooks") -> None:
        self.ssl_context = ssl_context
        self.user_agent = user_agent
        self._idle: dict[Origin, list[_Conn]] = {}

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        parts = urlsplit(url)
        host = parts.hostname or ""
        origin = (parts.scheme, host, parts.port or (443 if parts.scheme == "https" else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = h11.Request(method="POST", target=target, headers=[
            ("Host", parts.netloc.rpartition("@")[2]), ("User-Agent", self.user_agent),
            ("Content-Length", str(len(body))), *headers.items()])
        idle = self._idle.get(origin)
        if idle:
            conn = idle.pop()
            try:
                return await self._exchange(origin, conn, request, body)
            except (h11.RemoteProtocolError, ConnectionError, asyncio.IncompleteReadError):
                # The receiver closed a kept-alive connection meanwhile: once more on a new
                # one (safe: it had answered nothing, and receivers deduplicate anyway).
                pass
        conn = await self._connect(origin)
        return await self._exchange(origin, conn, request, body)

    async def _connect(self, origin: Origin) -> _Conn:
        scheme, host, port = origin
        context = None
        if scheme == "https":
            context = self.ssl_context or ssl.create_default_context()
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=host if context else None)
        return _Conn(reader, writer)

    async def _exchange(self, origin: Origin, conn: _Conn, request: h11.Request,
                        body: bytes) -> tuple[int, str]:
        try:
            h = conn.h11
            conn.writer.write(h.send(request) + h.send(h11.Data(data=body))
                              + h.send(h11.EndOfMessage()))
            await conn.writer.drain()
            status, got, total = 0, bytearray(), 0
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    h.receive_data(await conn.reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    total += len(event.data)
                    if len(got) < EXCERPT_BYTES:
                        got += event.data[: EXCERPT_BYTES - len(got)]
                    if total > self.max_body_bytes:
                        conn.close()
                        return status, got.decode("utf-8", "replace")
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionResetError("the receiver closed the connection")
        except BaseException:
            conn.close()
            raise
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self.max_idle:
                idle.append(conn)
            else:
                conn.close()
        else:
            conn.close()
        return status, got.decode("utf-8", "replace")

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class HttpxPoster:
    """The same through httpx (tests give it an ``httpx.MockTransport``)."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.client = httpx.AsyncClient(transport=transport, follow_redirects=False)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        async with self.client.stream("POST", url, content=body, headers=dict(headers)) as r:
            if r.is_stream_consumed:  # a response built whole (MockTransport)
                return r.status_code, r.content[:EXCERPT_BYTES].decode("utf-8", "replace")
            got = b""
            async for chunk in r.aiter_raw():
                got += chunk
                if len(got) >= EXCERPT_BYTES:
                    break
            return r.status_code, got[:EXCERPT_BYTES].decode("utf-8", "replace")

    async def aclose(self) -> None:
        await self.client.aclose()
