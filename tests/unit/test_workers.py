"""The ``--workers`` supervisor (gateway_node/workers.py) with stand-in workers: small Python
processes that follow the worker protocol (a byte on ``--ready-fd`` once serving, exit 0 on
SIGTERM), so restarts, failures and stopping are checked in seconds, without Django."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway_node import workers
from gateway_node.workers import Supervisor, Worker

pytestmark = pytest.mark.skipif(not workers.supported(), reason="--workers needs Linux")

#: A stand-in worker. Its behaviour comes from the environment, per worker index:
#: FAIL_AT_START (exit 3 before serving), CRASH_ONCE=<marker dir> (serve, then exit 7 the
#: first time), IGNORE_TERM (serve and ignore SIGTERM).
FAKE_WORKER = r"""
import os, signal, sys, time
index = os.environ["GATEWAY_NODE_ID"].rsplit("-w", 1)[1]
def wanted(name):
    return index in os.environ.get(name, "").split(",")
fd = int(sys.argv[sys.argv.index("--ready-fd") + 1])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if wanted("FAIL_AT_START"):
    sys.exit(3)
if wanted("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.write(fd, b"r")
os.close(fd)
marker = os.path.join(os.environ.get("CRASH_DIR", "/nonexistent"), "crashed-" + index)
if wanted("CRASH_ONCE") and not os.path.exists(marker):
    open(marker, "w").close()
    time.sleep(0.3)
    sys.exit(7)
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def make_supervisor() -> Iterator[Callable[..., Supervisor]]:
    made: list[Supervisor] = []

    def make(count: int = 2, stop_timeout_s: float = 10.0, **env: str) -> Supervisor:
        sup = Supervisor(command=[sys.executable, "-c", FAKE_WORKER], node_id="t",
                         count=count, env={**os.environ, **env}, stop_timeout_s=stop_timeout_s)
        made.append(sup)
        return sup

    yield make
    for sup in made:  # whatever a test left running
        for worker in sup.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()


def tick_until(sup: Supervisor, check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        sup.tick()
        time.sleep(0.02)


def test_node_ids_of_workers() -> None:
    assert workers.worker_node_id("gw-a", 2) == "gw-a-w2"


def test_run_stops_on_sigterm_and_exits_0(make_supervisor: Callable[..., Supervisor]) -> None:
    sup = make_supervisor()
    seen: list[list[str]] = []

    def ready(running: list[Worker]) -> None:
        seen.append([w.node_id for w in running])
        os.kill(os.getpid(), signal.SIGTERM)  # caught by the supervisor's handler

    sup.on_ready = ready
    previous = signal.getsignal(signal.SIGTERM)
    pids: list[int] = []
    original_start = sup.start

    def start() -> None:
        original_start()
        pids.extend(w.proc.pid for w in sup.workers if w.proc is not None)

    sup.start = start  # type: ignore[method-assign]
    assert sup.run() == 0
    assert seen == [["t-w1", "t-w2"]]
    assert sup.stop_signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == previous
    assert len(pids) == 2 and not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_a_worker_that_dies_is_restarted(make_supervisor: Callable[..., Supervisor],
                                         tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "RESTART_DELAYS_S", (0.2, 0.5))
    sup = make_supervisor(CRASH_ONCE="2", CRASH_DIR=str(tmp_path))
    sup.start()
    w2 = sup.workers[1]
    first_pid = w2.pid
    tick_until(sup, lambda: w2.restart_at is not None)  # served, then exited 7
    assert w2.failures == 1 and not sup.failure
    tick_until(sup, lambda: w2.ready and w2.pid != first_pid)
    assert sup.workers[0].ready and sup.workers[0].failures == 0
    assert sup.stop() == 0


def test_a_worker_that_never_serves_stops_them_all(
        make_supervisor: Callable[..., Supervisor]) -> None:
    sup = make_supervisor(FAIL_AT_START="2")
    started = time.monotonic()
    assert sup.run() == 1
    assert time.monotonic() - started < 10
    assert "t-w2" in sup.failure and "status 3" in sup.failure
    assert all(w.proc is None for w in sup.workers)


def test_a_worker_that_does_not_stop_is_killed(
        make_supervisor: Callable[..., Supervisor]) -> None:
    sup = make_supervisor(IGNORE_TERM="1", stop_timeout_s=0.5)
    sup.start()
    tick_until(sup, lambda: all(w.ready for w in sup.workers))
    assert sup.stop() == 1


def test_the_port_is_held_and_shared() -> None:
    anchor = workers.reserve_port("127.0.0.1", 0)
    port = anchor.getsockname()[1]
    listeners = [workers.listening_socket("127.0.0.1", port, backlog=128) for _ in range(2)]
    try:
        # Something else cannot take the port, and a second supervisor refuses it.
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        with pytest.raises(OSError):
            workers.reserve_port("127.0.0.1", port)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(32)]
        accepted = []
        for listener in listeners:
            listener.setblocking(False)
            count = 0
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                conn.close()
                count += 1
            accepted.append(count)
        assert sum(accepted) == 32 and all(accepted), accepted
        for client in clients:
            client.close()
    finally:
        for sock in (anchor, *listeners):
            sock.close()


def test_port_in_use_is_refused() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            workers.reserve_port("127.0.0.1", taken.getsockname()[1])


def test_metrics_dir_is_emptied_or_temporary(tmp_path: Path) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"x")
    (tmp_path / "keep.txt").write_text("x")
    directory, temporary = workers.metrics_dir({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert (directory, temporary) == (str(tmp_path), False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    directory, temporary = workers.metrics_dir({})
    assert temporary and Path(directory).is_dir()
    Path(directory).rmdir()
