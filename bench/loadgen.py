"""The load client: many WebSocket clients in one asyncio process, bounded in count and time.

Clients connect from many 127.x.y.z source addresses (loopback is a /8), so tens of
thousands of connections do not run out of ephemeral ports. Every push carries the time
it was sent (``data.t``, epoch seconds) and each client records ``now - t`` when the frame
arrives: the end-to-end latency, API (or control message) to client, on one machine clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import websockets


def source_addresses(count: int = 250) -> Iterator[str]:
    """127.0.1.1, 127.0.1.2, ...: distinct source addresses for outgoing connections."""
    return itertools.cycle(f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(count))


@dataclass
class Stats:
    received: int = 0
    latencies_s: list[float] = field(default_factory=list)
    closes: dict[int, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2)

        return {
            "received": self.received,
            "latency_ms": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99),
                           "max": round(lat[-1] * 1000, 2) if lat else None},
            "closes": {str(k): v for k, v in self.closes.items()},
        }


class Client:
    def __init__(self, ws: Any, stats: Stats, *, ping_every_s: float | None) -> None:
        self.ws = ws
        self.stats = stats
        self.ping_every_s = ping_every_s
        self.task = asyncio.create_task(self._read())
        self.pinger = asyncio.create_task(self._ping()) if ping_every_s else None

    async def _read(self) -> None:
        stats = self.stats
        try:
            async for raw in self.ws:
                # Cheap check first: only pushes carry a send time to measure.
                if raw.startswith('{"type":"push"') or raw.startswith('{"type": "push"'):
                    frame = json.loads(raw)
                    stats.received += 1
                    data = frame.get("data")
                    sent = data.get("t") if isinstance(data, dict) else None
                    if sent is not None:
                        stats.latencies_s.append(time.time() - sent)
        except websockets.ConnectionClosed:
            pass
        finally:
            code = self.ws.close_code or 1006
            stats.closes[code] = stats.closes.get(code, 0) + 1

    async def _ping(self) -> None:
        assert self.ping_every_s is not None
        with contextlib.suppress(websockets.ConnectionClosed, asyncio.CancelledError):
            while True:
                await asyncio.sleep(self.ping_every_s)
                await self.ws.send('{"type":"ping"}')

    async def close(self) -> None:
        if self.pinger:
            self.pinger.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2)
        self.task.cancel()


async def connect_many(
    urls: list[str], stats: Stats, *, concurrency: int = 200, ping_every_s: float | None = None,
    wait_welcome: bool = True, timeout_s: float = 120,
) -> tuple[list[Client], dict[str, Any]]:
    """Open one client per URL; returns the clients and connect figures (rate, failures)."""
    clients: list[Client] = []
    failures = 0
    sources = source_addresses()
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async def one(url: str) -> None:
        nonlocal failures
        async with gate:
            try:
                ws = await websockets.connect(
                    url, compression=None, max_size=None, open_timeout=30,
                    ping_interval=None, local_addr=(next(sources), 0),
                )
                if wait_welcome:
                    await asyncio.wait_for(ws.recv(), 30)
                clients.append(Client(ws, stats, ping_every_s=ping_every_s))
            except Exception:
                failures += 1

    await asyncio.wait_for(asyncio.gather(*(one(u) for u in urls)), timeout_s)
    elapsed = time.perf_counter() - started
    return clients, {
        "connected": len(clients), "failed": failures,
        "connect_per_s": round(len(clients) / elapsed, 1) if elapsed else None,
    }


async def wait_received(stats: Stats, expected: int, *, timeout_s: float) -> float:
    """Wait until ``expected`` pushes arrived (or the timeout); seconds waited."""
    started = time.perf_counter()
    deadline = started + timeout_s
    while stats.received < expected and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # polling a counter the readers bump: cheaper than an Event
    return time.perf_counter() - started


class HttpPool:
    """Keep-alive HTTP/1.1 connections for the pusher, over plain asyncio streams.

    A request costs the load client a few microseconds here where httpx costs about a
    millisecond, which capped what the bench could offer (a few hundred requests a second
    on a 2-core machine) below what the server takes. JSON bodies only; answers are read by
    ``Content-Length`` or chunked.
    """

    def __init__(self, host: str, port: int, *, size: int,
                 headers: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self.size = size
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {
            "Host": f"{host}:{port}", "Content-Type": "application/json", **(headers or {}),
        }.items()).encode("latin-1")
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue())
        self._open = 0
        self._all: set[asyncio.StreamWriter] = set()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` (JSON); the status and body of the answer."""
        reader, writer = await self._take()
        try:
            writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\n" + self.head
                         + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length, chunked = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                parts = []
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    parts.append((await reader.readexactly(size + 2))[:-2])
                await reader.readuntil(b"\r\n")
                content = b"".join(parts)
            else:
                content = await reader.readexactly(length)
        except BaseException:
            self._drop(writer)
            raise
        self._idle.put_nowait((reader, writer))
        return status, content

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._idle.empty() and self._open < self.size:
            self._open += 1
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except BaseException:
                self._open -= 1
                raise
            self._all.add(writer)
            return reader, writer
        return await self._idle.get()

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        self._open -= 1
        self._all.discard(writer)
        writer.close()

    async def aclose(self) -> None:
        for writer in list(self._all):
            writer.close()
        self._all.clear()
