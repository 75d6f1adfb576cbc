"""A small run of ``bench.soak_clients`` so that it cannot rot: it completes within its
bounds, prints its JSON line, restarts the node, and hands no push to the application twice.
(Zero lost is what the full soak measures: ``python -m bench.soak_clients``.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.gateway import REPO

pytestmark = pytest.mark.e2e


def test_the_client_soak_runs_small() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.soak_clients", "--clients", "20", "--restarts", "1",
         "--rate", "10", "--duration", "6", "--drain-timeout", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["scenario"] == "soak_clients" and report["clients"] == 20
    assert [r["exit_code"] for r in report["restarts"]] == [0]
    assert report["restarts"][0]["all_open_after_s"] is not None, report
    assert report["pushes_accepted"] > 0 and report["delivered_to_app"] > 0, report
    assert report["welcomes"] >= 40, report  # every client reconnected after the restart
    assert report["duplicated_to_app"] == 0, report
