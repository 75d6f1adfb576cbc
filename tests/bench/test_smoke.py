"""A small run of every benchmark scenario, so the suite cannot rot.

Speed is not asserted here (that is what ``bench/`` reports, as ratios in one run); only
that each scenario completes, prints its JSON line, and loses nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.gateway import REPO
from tests.support.services import rocketmq_endpoint

pytestmark = pytest.mark.e2e


def run_bench(*args: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", *args], cwd=REPO, capture_output=True, text=True,
        timeout=180, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stdout + result.stderr
    return lines


def test_broadcast_and_baseline_lose_nothing() -> None:
    baseline, broadcast, ratio = run_bench("all", "--clients", "100", "--rate", "10",
                                           "--duration", "2")
    for result in (baseline, broadcast):
        assert result["connect"]["connected"] == 100
        assert result["expected"] > 0
        assert result["loss"] == 0, result
        assert result["latency_ms"]["p99"] is not None
    assert ratio["scenario"] == "ratio" and ratio["broadcast_deliveries_vs_baseline"] > 0


@pytest.mark.parametrize("batch", ["1", "20"])
def test_targeted_loses_nothing(batch: str) -> None:
    (result,) = run_bench("targeted", "--clients", "300", "--rate", "100", "--duration", "2",
                          "--batch", batch)
    assert result["connect"]["failed"] == 0
    assert result["push_errors"] == 0
    assert result["expected"] > 0 and result["loss"] == 0, result


@pytest.mark.parametrize("server", ["daphne", "baseline"])
def test_idle_keeps_every_connection(server: str) -> None:
    (result,) = run_bench("idle", "--clients", "300", "--duration", "2", "--ping-every", "1",
                          "--server", server)
    assert result["server"] == ("baseline" if server == "baseline" else "gateway")
    assert result["alive_at_end"] == 300 and result["loss"] == 0, result
    assert result["kb_per_connection"] > 0


@pytest.mark.rocketmq
def test_rocketmq_loses_nothing() -> None:
    (result,) = run_bench("rocketmq", "--clients", "100", "--rate", "50", "--duration", "2",
                          "--rocketmq-endpoint", rocketmq_endpoint())
    assert result["expected"] > 0 and result["loss"] == 0, result


def test_broadcast_under_uvicorn_loses_nothing() -> None:
    (broadcast,) = run_bench("broadcast", "--server", "uvicorn", "--clients", "50", "--rate",
                             "5", "--duration", "1")
    assert broadcast["gateway_server"] == "uvicorn"
    assert broadcast["connect"]["connected"] == 50
    assert broadcast["expected"] > 0 and broadcast["loss"] == 0, broadcast


def test_two_apps_against_one_lose_nothing() -> None:
    lines = run_bench("apps", "--clients", "100", "--rate", "10", "--targeted-clients", "100",
                      "--targeted-rate", "50", "--duration", "1", "--rounds", "1", "--control",
                      "--kinds", "broadcast,targeted,multicast")
    runs = [line for line in lines if line["scenario"] == "apps"]
    assert [(r["kind"], r["layout"], r["apps"]) for r in runs] == [
        ("broadcast", "one-app", 1), ("broadcast", "two-apps", 2), ("broadcast", "control", 1),
        ("targeted", "one-app", 1), ("targeted", "two-apps", 2),
        ("multicast", "one-app", 1), ("multicast", "two-apps", 2)]
    for r in runs:
        # The control: half the clients, each sent twice the broadcasts.
        assert r["connect"]["connected"] == (50 if r["layout"] == "control" else 100)
        assert r["push_errors"] == 0
        # Negative loss would be a push that reached the other app's user of the same id.
        assert r["expected"] > 0 and r["loss"] == 0, r
    ratios = [line for line in lines if line["scenario"] == "apps-ratio"]
    assert [r["kind"] for r in ratios] == ["broadcast", "targeted", "multicast"]
    assert all(r["clean"] and r["throughput_ratio"] > 0 for r in ratios)
    assert ratios[0]["two_apps_vs_control_throughput_ratio"] > 0


def test_webhooks_scenario_sends_every_event_and_loses_no_push():
    result = subprocess.run(
        [sys.executable, "-m", "bench.webhooks", "--clients", "20", "--rate", "50",
         "--duration", "2", "--events", "500"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert line["webhook_calls_total"] >= line["events_due"] >= 500
    assert all(line[phase]["loss"] == 0 and line[phase]["push_errors"] == 0
               for phase in ("off_before", "on", "off_after"))
