"""Helpers of the monitoring tests: a local webhook sink, a throwaway Redis server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import free_port


class WebhookSink:
    """A tiny HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200  # what it answers; tests set 500 to play a broken receiver
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                with sink._lock:
                    sink.received.append(body)
                self.send_response(sink.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def notices(self) -> list[tuple[str, str, str]]:
        """``(status, alertname, node)`` of every alert received, in order."""
        with self._lock:
            return [
                (alert["status"], alert["labels"]["alertname"], alert["labels"].get("node", ""))
                for body in self.received for alert in body["alerts"]
            ]

    def wait_for(self, notice: tuple[str, str, str], within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while notice not in self.notices():
            if time.monotonic() > deadline:
                raise AssertionError(f"no {notice} within {within} s; got {self.notices()}")
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def redis_server_binary() -> str:
    """Path of ``redis-server``; skips (or fails under scripts/test.sh) without it."""
    path = shutil.which("redis-server")
    if path:
        return path
    message = "redis-server is not installed (scripts/services.sh install)"
    if os.environ.get("GATEWAY_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


class ThrowawayRedis:
    """A Redis server this test owns on a free port: stopped and started at will, never the
    suite's shared one."""

    def __init__(self, workdir: Path) -> None:
        self.binary = redis_server_binary()
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
