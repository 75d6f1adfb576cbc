"""A real local HTTP receiver of webhook calls, for end-to-end tests and the bench.

An asyncio server in a thread of its own (keep-alive, many connections at once), small
enough to answer thousands of calls a second. Each path behaves as the test says:
``answer(path, status, ...)`` queues statuses, ``hang(path)`` holds calls until the test
ends, ``delay(path, s)`` answers late. Every call is recorded with its arrival time,
headers and raw body, so a test verifies signatures on the bytes received.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from tests.support.gateway import free_port
from webhooks.signing import verify

#: ``GET`` here answers the number of calls so far (the bench reads it from another process).
COUNT_PATH = "/_count"


@dataclass(frozen=True)
class Call:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    def verified(self, secret: str) -> bool:
        return verify(secret, self.body, self.headers.get("gateway-signature", ""),
                      now=int(time.time()))


class Receiver:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None, *,
                 record: bool = True) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.record = record
        self.calls: list[Call] = []
        self.count = 0
        self._statuses: dict[str, deque[int]] = defaultdict(deque)
        self._delays: dict[str, float] = {}
        self._hung: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._release: asyncio.Event | None = None
        #: Open client connections, closed by ``stop`` (``Server.close_clients`` is 3.13+).
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, path: str = "/hook") -> str:
        return f"http://{self.host}:{self.port}{path}"

    # --- behaviour ------------------------------------------------------------------
    def answer(self, path: str, *statuses: int) -> None:
        """The next calls to ``path`` get these statuses, then 200."""
        self._statuses[path].extend(statuses)

    def delay(self, path: str, seconds: float) -> None:
        self._delays[path] = seconds

    def hang(self, path: str) -> None:
        self._hung.add(path)

    def calls_to(self, path: str) -> list[Call]:
        return [c for c in list(self.calls) if c.path == path]

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> Receiver:
        ready = threading.Event()

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            self._release = asyncio.Event()
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port, backlog=1024))
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=serve, name="webhook-receiver", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            assert self._release is not None
            self._release.set()
            server.close()
            for writer in list(self._writers):
                writer.close()
            await asyncio.sleep(0)
            loop.stop()

        asyncio.run_coroutine_threadsafe(close(), loop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP -----------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, _, value = line.partition(":")
                        headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if path == COUNT_PATH:  # the bench's probe, not a call
                    text = str(self.count).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(text), text))
                    await writer.drain()
                    continue
                self.count += 1
                if self.record:
                    self.calls.append(Call(time.time(), path, headers, body))
                if path in self._hung:
                    assert self._release is not None
                    await self._release.wait()
                    return
                if path in self._delays:
                    await asyncio.sleep(self._delays[path])
                queued = self._statuses.get(path)
                status = queued.popleft() if queued else 200
                text = b"ok" if status < 300 else b"receiver says no"
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s"
                             % (status, len(text), text))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


if __name__ == "__main__":
    # ``python -m tests.support.receiver PORT``: a fast receiver in a process of its own
    # (the bench), answering 200 to every call and recording nothing.
    import sys

    server = Receiver(port=int(sys.argv[1]), record=False).start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
