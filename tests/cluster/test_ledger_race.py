"""Delivery totals of one push written by several nodes at once add up (PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from tests.support.gateway import REPO, base_env

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def test_simultaneous_ledger_writes_of_two_nodes_both_count(cluster_database: str,
                                                            tmp_path) -> None:
    env = base_env(tmp_path, "ledger-race",
                   {"DATABASE_URL": cluster_database, "PYTHONPATH": str(REPO)})
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "cluster" / "ledger_race.py"), uuid.uuid4().hex],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip() == "2", "a node's deliveries were lost: " + result.stdout
