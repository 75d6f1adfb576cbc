"""Real gateway processes for end-to-end tests: started on free loopback ports, stopped by
the fixture that started them even when a test fails."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
JWT_SECRET = "e2e-jwt-secret-0123456789abcdef0123456789abcdef"
DJANGO_SECRET = "e2e-django-secret-0123456789abcdef0123456789abcdef"


#: ``rungateway --server`` choices, for tests that must hold under each server.
SERVERS = ("daphne", "uvicorn")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def base_env(data_dir: Path, node_id: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DJANGO_"))}
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)
    env.update({
        "DJANGO_SETTINGS_MODULE": "gatewaysite.settings",
        "GATEWAY_DATA_DIR": str(data_dir),
        "GATEWAY_JWT_SECRET": JWT_SECRET,
        "DJANGO_SECRET_KEY": DJANGO_SECRET,
        "GATEWAY_NODE_ID": node_id,
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


@dataclass
class GatewayProcess:
    node_id: str
    host: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws/"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def procs(self) -> list[subprocess.Popen[bytes]]:
        """The node's processes: the server first, then its helpers (``runconsumer``)."""
        return [p for p in (self.proc, *self.extra_procs) if p is not None]

    def manage(self, *args: str, timeout: float = 60) -> str:
        """Run a management command against this node's settings; its stdout."""
        return manage(self.env, *args, timeout=timeout)

    def api_key(self, name: str | None = None) -> str:
        name = name or f"client-{time.monotonic_ns()}"
        return self.manage("createapikey", name).strip()

    def wait_ready(self, timeout_s: float = 45) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"node {self.node_id} did not answer /healthz:\n{self.log()[-4000:]}")

    def wait_readyz(self, timeout_s: float = 45) -> dict[str, Any]:
        """Poll ``/readyz`` until it answers 200 (database, channel layer, broker and, for a
        node that consumes in-process, its broker consumer); its body."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"{self.url}/readyz", timeout=5)
                last = f"{response.status_code} {response.text}"
                if response.status_code == 200:
                    return dict(response.json())
            time.sleep(0.2)
        raise RuntimeError(
            f"node {self.node_id} not ready within {timeout_s} s (last /readyz: {last}):\n"
            f"{self.log()[-4000:]}"
        )

    def _check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"node {self.node_id}: {proc.args!r} exited {proc.returncode}:\n"
                    f"{self.log()[-8000:]}"
                )

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int | None:
        """Signal the process (and any helper processes) and wait; None if it had to be killed."""
        procs = self.procs
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(sig)
        code: int | None = None
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            killed = False
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                killed = True
            if proc is self.proc:
                code = None if killed else proc.returncode
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def manage(env: dict[str, str], *args: str, timeout: float = 60) -> str:
    """Run ``manage.py`` with ``env`` (e.g. ``migrate`` before a cluster starts); its stdout."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=timeout, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} exited {result.returncode}:\n"
                           f"{result.stdout}\n{result.stderr}")
    return result.stdout


def spawn(args: Sequence[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    return subprocess.Popen(
        list(args), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_gateway(
    workdir: Path,
    *,
    node_id: str = "e2e",
    env: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    args: Sequence[str] = (),
    migrate: bool = True,
    wait: bool = True,
) -> GatewayProcess:
    """``manage.py rungateway`` as a real process, ready when this returns (with ``wait``
    False it returns at once: call ``wait_ready`` to start several nodes side by side)."""
    data_dir = workdir / node_id
    data_dir.mkdir(parents=True, exist_ok=True)
    gw = GatewayProcess(
        node_id=node_id, host=host, port=port or free_port(host),
        env=base_env(data_dir, node_id, env), log_path=data_dir / "gateway.log",
    )
    cmd = [sys.executable, "manage.py", "rungateway", "--host", host, "--port", str(gw.port), *args]
    if not migrate:
        cmd.append("--no-migrate")
    gw.proc = spawn(cmd, gw.env, gw.log_path)
    if wait:
        _wait_or_kill(gw)
    return gw


def start_split_node(
    workdir: Path,
    *,
    node_id: str,
    env: dict[str, str],
    host: str = "127.0.0.1",
    port: int | None = None,
    wait: bool = True,
) -> GatewayProcess:
    """A node as separate processes: ``daphne gatewaysite.asgi:application`` (the web side)
    and ``manage.py runconsumer`` (the broker consumer), sharing the node's channel layer,
    so ``env`` must set ``REDIS_URL`` and a broker other than ``local``. Both write to the
    node's log; ``proc`` is daphne, ``extra_procs[0]`` runconsumer."""
    data_dir = workdir / node_id
    data_dir.mkdir(parents=True, exist_ok=True)
    gw = GatewayProcess(
        node_id=node_id, host=host, port=port or free_port(host),
        env=base_env(data_dir, node_id, env), log_path=data_dir / "gateway.log",
    )
    assert gw.env.get("REDIS_URL"), "a split node needs REDIS_URL for its channel layer"
    gw.proc = spawn(
        [sys.executable, "-m", "daphne", "-b", host, "-p", str(gw.port),
         "gatewaysite.asgi:application"],
        gw.env, gw.log_path,
    )
    gw.extra_procs.append(spawn([sys.executable, "manage.py", "runconsumer"], gw.env, gw.log_path))
    if wait:
        _wait_or_kill(gw)
    return gw


def _wait_or_kill(gw: GatewayProcess) -> None:
    try:
        gw.wait_ready()
    except BaseException:
        gw.kill()
        raise


@contextlib.contextmanager
def running_gateway(workdir: Path, **kwargs: object) -> Iterator[GatewayProcess]:
    gw = start_gateway(workdir, **kwargs)  # type: ignore[arg-type]
    try:
        yield gw
    finally:
        gw.stop()


# --- Live gateways: started for a test, their logs in its report if it fails ---------------

_LIVE: list[GatewayProcess] = []


def live_gateways() -> list[GatewayProcess]:
    """The gateways ``start_live`` started and ``stop_live`` has not stopped yet."""
    return list(_LIVE)


def start_live(workdir: Path, node_id: str, env: dict[str, str] | None = None,
               server: str = "daphne") -> GatewayProcess:
    """A gateway under ``server``, listed as live until ``stop_live``."""
    gw = start_gateway(workdir, node_id=node_id, env=env, args=("--server", server))
    _LIVE.append(gw)
    return gw


def stop_live(gw: GatewayProcess) -> None:
    try:
        gw.stop()
    finally:
        if gw in _LIVE:
            _LIVE.remove(gw)


@contextlib.contextmanager
def gateway_starter(
    workdir_for: Callable[[str], Path],
) -> Iterator[Callable[..., GatewayProcess]]:
    """``start(node_id, server="daphne", **env)``: gateways in ``workdir_for(node_id)``,
    every one stopped when the block ends (the ``start_node`` fixtures)."""
    started: list[GatewayProcess] = []

    def start(node_id: str, server: str = "daphne", **env: str) -> GatewayProcess:
        gw = start_live(workdir_for(node_id), node_id, env, server)
        started.append(gw)
        return gw

    try:
        yield start
    finally:
        for gw in started:
            stop_live(gw)
