"""A small run of ``bench.routed`` (two nodes, both modes), so the scenario cannot rot: it
completes, loses nothing, and in routed mode no node reads the other's pushes. Speed is not
asserted; the figures are docs/performance.md's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gateway import REPO
from tests.support.services import database_url, redis_url

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]


def test_routed_bench_two_nodes_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "routed.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "bench.routed", "--nodes", "2", "--users", "100", "--rate", "20",
         "--duration", "2", "--database-url", database_url(), "--redis-url", redis_url(),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    broadcast, routed = (json.loads(line) for line in out.read_text().splitlines())
    for run in (broadcast, routed):
        assert run["pushes_sent"] > 0 and run["loss"] == 0, run
    assert broadcast["read_per_node"] == [broadcast["pushes_sent"]] * 2
    assert sum(routed["read_per_node"]) == routed["pushes_sent"]
    assert routed["not_held_per_node"] == [0, 0] and routed["fallback_rounds"] == 0
    report = subprocess.run(
        [sys.executable, "-m", "bench.routed", "--report", str(out), "--chart",
         str(tmp_path / "chart.png")], cwd=REPO, capture_output=True, text=True, timeout=60,
        check=True)
    assert "| redis | 2 | routed |" in report.stdout
    assert (tmp_path / "chart.png").stat().st_size > 0
