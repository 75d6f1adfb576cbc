"""``rungateway --workers N``: N worker processes serving one host:port, one per core.

Each worker is ``manage.py rungateway`` with ``GATEWAY_NODE_ID=<node id>-w<i>``: a full
member of the cluster, with its own broker consumer (RocketMQ group, Redis stream cursor),
its own ``Node`` row, sessions, channel-layer prefix and metrics label; the workers share
only the database and the broker, like nodes on different hosts. So the in-process
``local`` broker cannot serve them (``rungateway`` refuses it).

Sharing the port: ``SO_REUSEPORT`` (Linux). The supervisor first binds the port without it,
so that it fails at once when something else listens there, then keeps it bound (not
listening) with ``SO_REUSEPORT`` while workers come and go. Each worker binds and listens
on a ``SO_REUSEPORT`` socket of its own, and the kernel spreads new connections evenly over
the listening sockets (by a hash of the client's address and port). A worker that dies
takes its socket with it: the connections waiting in its accept queue are reset (their
clients reconnect), and new ones go to the live workers until it is back. One socket
inherited by every worker would keep a dead worker's queue, but spreads connections by
whichever process wakes first, and long-lived WebSockets would pile up unevenly.

Metrics: every worker runs in prometheus_client's multi-process mode on one directory
(``PROMETHEUS_MULTIPROC_DIR`` if set, emptied at start; else a private temporary one), so
the ``/metrics`` of whichever worker answers on the shared port lists every worker's
series, each under its own ``node`` label: one scrape target per host.

The supervisor forwards SIGTERM/SIGINT to the workers (each drains: its clients get 4012),
waits for them (``STOP_TIMEOUT_S``, then SIGKILL) and exits 0 when every one exited 0. A
worker that exits on its own is restarted after a back-off; one that exits before it ever
served (a bad setting, say) stops them all, since its siblings would fail the same way.
Workers run in their own process group (a terminal's Ctrl-C reaches only the supervisor,
which forwards it once) and get SIGTERM if the supervisor dies (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

logger = logging.getLogger("gateway.workers")

#: How long workers get to drain and exit after the stop signal before they are killed.
STOP_TIMEOUT_S = 30.0
#: Waits before restarting a worker that exited, by how many times it did in a row.
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
#: A worker that ran this long before exiting starts its back-off from the beginning.
STABLE_AFTER_S = 60.0
POLL_S = 0.1
_PR_SET_PDEATHSIG = 1


def supported() -> bool:
    """Whether this system spreads connections over ``SO_REUSEPORT`` sockets (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def worker_node_id(node_id: str, index: int) -> str:
    return f"{node_id}-w{index}"


def _address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, tuple(sockaddr)


def _socket(family: socket.AddressFamily, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """In the supervisor: fail (``OSError``) if something listens on ``host:port``, else
    hold the port, bound and not listening, for the workers (port 0 picks one)."""
    family, address = _address(host, port)
    if port:
        with _socket(family, reuse_port=False) as probe:
            probe.bind(address)
    anchor = _socket(family, reuse_port=True)
    try:
        anchor.bind(address)
    except BaseException:
        anchor.close()
        raise
    return anchor


def listening_socket(host: str, port: int, *, backlog: int) -> socket.socket:
    """In a worker: its own listening socket on the shared port."""
    family, address = _address(host, port)
    sock = _socket(family, reuse_port=True)
    try:
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def notify_ready(fd: int) -> None:
    """In a worker: tell the supervisor that it serves (one byte on the inherited pipe)."""
    with contextlib.suppress(OSError):
        os.write(fd, b"r")
    with contextlib.suppress(OSError):
        os.close(fd)


def metrics_dir(environ: Mapping[str, str]) -> tuple[str, bool]:
    """The workers' multi-process metrics directory, emptied; and whether it is ours to
    remove at the end (a temporary one, when ``PROMETHEUS_MULTIPROC_DIR`` is not set)."""
    configured = environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if not configured:
        return tempfile.mkdtemp(prefix="gateway-metrics-"), True
    os.makedirs(configured, exist_ok=True)
    for name in glob.glob(os.path.join(configured, "*.db")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)
    return configured, False


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the supervisor dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"status {code}"


@dataclass
class Worker:
    index: int
    node_id: str
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    started_at: float = 0.0
    #: Serving in this life; served in any life.
    ready: bool = False
    served: bool = False
    #: Exits in a row (reset by a run longer than ``STABLE_AFTER_S``).
    failures: int = 0
    restart_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    """Runs ``count`` workers (``command`` plus ``--ready-fd``), restarts those that exit,
    stops them all on SIGTERM/SIGINT; ``run`` returns the exit status."""

    def __init__(self, *, command: Sequence[str], node_id: str, count: int,
                 env: Mapping[str, str], on_ready: Callable[[list[Worker]], None] | None = None,
                 stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.workers = [Worker(i, worker_node_id(node_id, i)) for i in range(1, count + 1)]
        self.on_ready = on_ready
        self.stop_timeout_s = stop_timeout_s
        self.stop_signal: int | None = None
        self.failure = ""
        self._stopping = False
        self._announced = False
        self._preexec = _die_with_parent()

    # --- Running ---------------------------------------------------------------------------

    def run(self) -> int:
        handled = (signal.SIGTERM, signal.SIGINT)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in handled}
        try:
            self.start()
            while self.stop_signal is None and not self.failure:
                self.tick()
                time.sleep(POLL_S)
            return self.stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for worker in self.workers:
                self._close_pipe(worker)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        if self._stopping:
            # Again while they drain: pass it on, as a second Ctrl-C on one process would.
            self._signal_all(signum)

    def start(self) -> None:
        for worker in self.workers:
            self._start(worker)

    def _start(self, worker: Worker) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        try:
            worker.proc = subprocess.Popen(
                [*self.command, "--ready-fd", str(write_fd)],
                env={**self.env, "GATEWAY_NODE_ID": worker.node_id},
                pass_fds=(write_fd,), process_group=0, preexec_fn=self._preexec,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        worker.ready_fd = read_fd
        worker.started_at = time.monotonic()
        worker.ready = False
        worker.restart_at = None
        logger.info("worker %s started (pid %d)", worker.node_id, worker.proc.pid)

    def tick(self) -> None:
        """One look at every worker: ready, exited (restart later), due for a restart."""
        now = time.monotonic()
        for worker in self.workers:
            self._read_ready(worker)
            if worker.proc is not None:
                code = worker.proc.poll()
                if code is not None:
                    self._exited(worker, code, now)
            elif worker.restart_at is not None and now >= worker.restart_at:
                self._start(worker)
        if not self._announced and all(w.ready for w in self.workers):
            self._announced = True
            if self.on_ready is not None:
                self.on_ready(self.workers)

    def _read_ready(self, worker: Worker) -> None:
        if worker.ready_fd is None or worker.ready:
            return
        try:
            data = os.read(worker.ready_fd, 16)
        except BlockingIOError:
            return
        if data:
            worker.ready = True
            if worker.served:
                logger.info("worker %s serves again (pid %s)", worker.node_id, worker.pid)
            worker.served = True
        self._close_pipe(worker)

    def _exited(self, worker: Worker, code: int, now: float) -> None:
        ran_s = now - worker.started_at
        pid = worker.pid
        worker.proc = None
        worker.ready = False
        self._close_pipe(worker)
        if not worker.served:
            if not self.failure:
                self.failure = (f"worker {worker.node_id} (pid {pid}) exited with "
                                f"{describe_exit(code)} before it served")
                logger.error("%s; stopping the others", self.failure)
            return
        if ran_s >= STABLE_AFTER_S:
            worker.failures = 0
        delay = RESTART_DELAYS_S[min(worker.failures, len(RESTART_DELAYS_S) - 1)]
        worker.failures += 1
        worker.restart_at = now + delay
        logger.error("worker %s (pid %s) exited with %s after %.0f s; restarting it in %.0f s",
                     worker.node_id, pid, describe_exit(code), ran_s, delay)

    # --- Stopping --------------------------------------------------------------------------

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signum)

    def stop(self) -> int:
        """Signal every live worker (with the signal received, else SIGTERM), wait for
        each (bounded, then SIGKILL); 0 if all exited 0 and none failed to start."""
        self._stopping = True
        signum = self.stop_signal or signal.SIGTERM
        live = [w for w in self.workers if w.proc is not None]
        if live:
            logger.info("stopping %d worker(s) (%s)", len(live), signal.Signals(signum).name)
        self._signal_all(signum)
        deadline = time.monotonic() + self.stop_timeout_s
        status = 1 if self.failure else 0
        for worker in live:
            assert worker.proc is not None
            try:
                code = worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("worker %s (pid %d) did not stop within %.0f s; killing it",
                             worker.node_id, worker.proc.pid, self.stop_timeout_s)
                worker.proc.kill()
                worker.proc.wait()
                status = 1
                continue
            if code != 0:
                logger.error("worker %s exited with %s", worker.node_id, describe_exit(code))
                status = 1
        for worker in self.workers:
            worker.proc = None
        return status

    def _close_pipe(self, worker: Worker) -> None:
        if worker.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(worker.ready_fd)
            worker.ready_fd = None


def supervise(*, command: Callable[[int], Sequence[str]], node_id: str, count: int,
              host: str, port: int, on_ready: Callable[[list[Worker], int], None] | None = None,
              stop_timeout_s: float = STOP_TIMEOUT_S) -> int:
    """Hold ``host:port`` and run ``count`` workers on it until stopped; the exit status.

    ``command(port)`` is a worker's command line (without ``--ready-fd``) for the port held
    (``port`` 0 picks a free one); ``on_ready(workers, port)`` runs once all of them serve.
    Raises ``OSError`` when the port cannot be had."""
    anchor = reserve_port(host, port)
    port = int(anchor.getsockname()[1])
    directory, temporary = metrics_dir(os.environ)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
    announce = None if on_ready is None else (lambda workers: on_ready(workers, port))
    try:
        return Supervisor(command=command(port), node_id=node_id, count=count, env=env,
                          on_ready=announce, stop_timeout_s=stop_timeout_s).run()
    finally:
        anchor.close()
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
