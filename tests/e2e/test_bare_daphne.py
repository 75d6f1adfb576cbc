"""A bare ``daphne gatewaysite.asgi:application`` stopped with SIGTERM marks its node stopped
(issue #17: the row kept no ``stopped_at`` and ``GatewayNodeDown`` fired 36 s later)."""

from __future__ import annotations

import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from tests.support.gateway import GatewayProcess, base_env, free_port, manage, spawn

pytestmark = pytest.mark.e2e


def test_sigterm_to_a_bare_daphne_marks_its_node_stopped(tmp_path: Path) -> None:
    env = base_env(tmp_path, "bare-daphne",
                   {"GATEWAY_BROKER": "local", "GATEWAY_RECORD_INTERVAL": "1"})
    manage(env, "migrate")
    gw = GatewayProcess(node_id="bare-daphne", host="127.0.0.1", port=free_port(),
                        env=env, log_path=tmp_path / "gateway.log")
    gw.proc = spawn([sys.executable, "-m", "daphne", "-b", gw.host, "-p", str(gw.port),
                     "gatewaysite.asgi:application"], env, gw.log_path)
    try:
        gw.wait_ready()  # the first request starts the node (Daphne has no lifespan)
        deadline = time.monotonic() + 10
        while not node_rows(tmp_path):  # a live node's beat, before the stop
            assert time.monotonic() < deadline, f"no Node row:\n{gw.log()[-3000:]}"
            time.sleep(0.2)
        assert node_rows(tmp_path) == [(None,)]
    finally:
        code = gw.stop(signal.SIGTERM)
    assert code is not None, gw.log()[-3000:]
    rows = node_rows(tmp_path)
    assert len(rows) == 1 and rows[0][0] is not None, f"not marked stopped:\n{gw.log()[-3000:]}"


def node_rows(data_dir: Path) -> list[tuple[str | None]]:
    with sqlite3.connect(data_dir / "gateway.sqlite3") as db:
        return db.execute("SELECT stopped_at FROM sessions_app_node WHERE id = ?",
                          ("bare-daphne",)).fetchall()
