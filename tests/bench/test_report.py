"""bench.report on a synthetic sweep (tables, target verdicts, doc markers, chart), the
sweep's matrix and failure handling, and one real quick sweep point end to end."""

from __future__ import annotations

import copy
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report, sweep
from tests.support.gateway import REPO, free_port

META = {"scenario": "meta", "date": "2026-11-20T10:00:00+00:00", "commit": "abc1234",
        "python": "3.11.7", "cpu_count": 2, "cpu_model": "Test CPU", "loadavg": [0.1, 0.2, 0.3],
        "quick": False}


def fan(point: str, series: str, *, rate: float, dps: float, p50: float, p99: float,
        cpu_us: float = 10.0, clients: int = 1000, achieved: float | None = None,
        loss: int = 0, errors: int = 0, args: tuple[str, ...] = (),
        scenario: str = "broadcast") -> dict[str, Any]:
    server = "baseline" if series == "baseline" else "gateway"
    line: dict[str, Any] = {
        "scenario": scenario, "server": server, "clients": clients,
        "connect": {"connected": clients, "failed": 0, "connect_per_s": 3000.0},
        "offered_push_rate": rate, "achieved_push_rate": rate if achieved is None else achieved,
        "push_errors": errors, "deliveries_per_s": dps, "expected": 1000, "loss": loss,
        "latency_ms": {"p50": p50, "p90": (p50 + p99) / 2, "p99": p99, "max": p99 * 2},
        "server_rss_mb": 120.0, "server_cpu_pct": 80.0, "server_cpu_us_per_delivery": cpu_us,
        "series": series, "point": point, "args": [scenario, *args],
    }
    if server == "gateway":
        line["gateway_server"] = series.split("-")[0]
    return line


def idle(series: str, *, alive: int, kb: float, cpu: float, connect_per_s: float,
         failed: int = 0) -> dict[str, Any]:
    return {
        "scenario": "idle", "server": "gateway", "gateway_server": series, "clients": 19000,
        "connect": {"connected": 19000 - failed, "failed": failed,
                    "connect_per_s": connect_per_s},
        "alive_at_end": alive, "ping_every_s": 25.0, "server_rss_mb": 400.0,
        "kb_per_connection": kb, "server_cpu_pct": cpu, "loss": 19000 - alive,
        "series": series, "point": f"idle-19000-{series}", "args": ["idle"],
    }


def synthetic() -> list[dict[str, Any]]:
    return [
        META,
        fan("broadcast-10k-baseline", "baseline", rate=10, dps=9800, p50=3, p99=8, cpu_us=9.1),
        fan("broadcast-10k-daphne", "daphne", rate=10, dps=9700, p50=5, p99=12, cpu_us=20.5),
        fan("broadcast-10k-uvicorn", "uvicorn", rate=10, dps=9750, p50=4, p99=10, cpu_us=14.2),
        fan("broadcast-50k-baseline", "baseline", rate=50, dps=49200, p50=12, p99=30,
            cpu_us=10.7),
        fan("broadcast-50k-daphne", "daphne", rate=50, dps=48400, p50=20, p99=45, cpu_us=19.4,
            achieved=49.9),
        fan("broadcast-50k-uvicorn", "uvicorn", rate=50, dps=49400, p50=25, p99=60,
            cpu_us=13.9),
        fan("broadcast-100k-uvicorn", "uvicorn", rate=100, dps=88000, p50=300, p99=900,
            cpu_us=12.0, achieved=90),
        fan("targeted-1500-daphne", "daphne", scenario="targeted", clients=10000, rate=1500,
            dps=1480, achieved=1490, p50=3.4, p99=40, cpu_us=560),
        fan("targeted-1500-uvicorn", "uvicorn", scenario="targeted", clients=10000, rate=1500,
            dps=1190, achieved=1200, p50=3, p99=30, cpu_us=300, args=("--server", "uvicorn")),
        fan("batch-10k-daphne", "daphne", scenario="targeted", clients=10000, rate=10000,
            dps=9850, achieved=9900, p50=40, p99=95, cpu_us=90, args=("--batch", "100")),
        {"scenario": "skipped", "series": "daphne", "point": "rocketmq-2000-daphne",
         "reason": "RocketMQ proxy 127.0.0.1:8081 is not accepting connections"},
        idle("daphne", alive=19000, kb=14.5, cpu=1.2, connect_per_s=2500),
        idle("uvicorn", alive=18990, kb=21.3, cpu=6.0, connect_per_s=1800),
        fan("workers-100k-daphne-w1", "daphne-workers1", rate=100, dps=68000, p50=80, p99=200),
        fan("workers-100k-daphne-w2", "daphne-workers2", rate=100, dps=74000, p50=60, p99=150,
            args=("--workers", "2")),
        fan("workers-100k-uvicorn-w1", "uvicorn-workers1", rate=100, dps=70000, p50=50,
            p99=120),
        fan("workers-100k-uvicorn-w2", "uvicorn-workers2", rate=100, dps=69000, p50=55,
            p99=130, args=("--workers", "2")),
        {"scenario": "error", "series": "uvicorn", "point": "idle-19000-uvicorn-old",
         "timeout_s": 370, "stderr": "Traceback ...\nKeyboardInterrupt"},
    ]


def write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def verdicts(lines: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    parsed = report.parse(json.dumps(line) for line in lines)
    return {(v.target.split(" ")[0] + ("-p99" if "p99 <" in v.target and "targeted" in v.target
                                       else ""), v.server): v.status
            for v in report.evaluate(parsed.results)}


DOC = """# Performance

Intro prose that stays.

## Running the benchmarks

```bash
python -m bench.run all
```

## Preliminary results

| old | table |
|---|---|
| 1 | 2 |

Old prose.

## What was fixed, from the profiles

- kept
"""


def test_tables_contain_the_measured_numbers() -> None:
    text = report.render(report.parse(json.dumps(line) for line in synthetic()),
                         chart="images/latency-vs-load.png")
    assert "Measured 2026-11-20 10:00 UTC at commit `abc1234` on 2x Test CPU" in text
    assert "![Latency against load" in text and "(images/latency-vs-load.png)" in text
    # (a) broadcast: a row per offered load, a column per series, ratios to the baseline
    row = next(line for line in text.splitlines() if line.startswith("| 50.0k (50 pushes/s)"))
    assert "| 49.2k/s, p50 12 ms, p99 30 ms (10.7 µs) |" in row
    assert "| 48.4k/s, p50 20 ms, p99 45 ms (19.4 µs) |" in row
    assert "| 49.4k/s, p50 25 ms, p99 60 ms (13.9 µs) |" in row
    assert row.endswith("| 0.98x | 1.00x |")  # 48.4 / 49.2, 49.4 / 49.2
    row100 = next(line for line in text.splitlines() if line.startswith("| 100k (100 pushes/s)"))
    # no baseline, no daphne, so no ratio either
    assert row100.split("|")[2:-1] == [" — ", " — ", " 88.0k/s, p50 300 ms, p99 900 ms (12.0 µs) ",
                                       " — ", " — "]
    # (b) targeted: single and batch
    assert "| daphne | 1 | 1,500 | 1,490 | 3.4 | 40 | 80 | 0 | 0 | 560.0 |" in text
    assert "| uvicorn | 1 | 1,500 | 1,200 | 3.0 | 30 | 60 | 0 | 0 | 300.0 |" in text
    assert "| daphne | 100 (batch) | 10.0k | 9,900 | 40 | 95 | 190 | 0 | 0 | 90.0 |" in text
    # (c) rocketmq: skipped, listed as such
    assert "### Through RocketMQ\n\n_Not measured._" in text
    assert "- `rocketmq-2000-daphne`: skipped: RocketMQ proxy" in text
    assert "- `idle-19000-uvicorn-old`: timed out after 370 s" in text
    # (d) idle
    assert "| daphne | 19,000 | 19,000 | 2,500 | 0 | 14.5 |  | 1.20 |  | 400.0 |" in text
    assert "| uvicorn | 19,000 | 18,990 | 1,800 | 0 | 21.3 |  | 6.00 |  | 400.0 |" in text
    # (e) workers
    assert "| daphne | 68.0k/s, p99 200 ms, CPU 80.0 % | 74.0k/s, p99 150 ms, CPU 80.0 % | " \
           "1.09x |" in text
    assert text.rstrip().endswith("370 s")


def test_target_verdicts_come_from_the_data() -> None:
    got = verdicts(synthetic())
    assert got["broadcast", "daphne"] == "met"  # 50k offered, kept up, p99 45 ms
    assert got["broadcast", "uvicorn"] == "not met"  # p99 60 ms; at 100k it fell behind
    assert got["single-push", "daphne"] == "met"  # 1,490 of 1,500: kept up
    assert got["single-push", "uvicorn"] == "not met"  # 1,200 of 1,500
    assert got["batch", "daphne"] == "met"
    assert got["batch", "uvicorn"] == "not measured"
    assert got["targeted-p99", "daphne"] == "met"
    assert got["targeted-p99", "uvicorn"] == "not met"  # p99 fine, but it did not keep up
    assert got["RocketMQ", "daphne"] == got["RocketMQ", "uvicorn"] == "not measured"
    assert got["19,000", "daphne"] == "met" and got["19,000", "uvicorn"] == "not met"
    assert got["heartbeats", "daphne"] == "met" and got["heartbeats", "uvicorn"] == "not met"
    assert got["connect", "daphne"] == "met" and got["connect", "uvicorn"] == "not met"
    assert got["`--workers", "daphne"] == "met" and got["`--workers", "uvicorn"] == "not met"
    text = report.render(report.parse(json.dumps(line) for line in synthetic()))
    row = next(line for line in text.splitlines() if line.startswith("| broadcast ≥ 50,000"))
    assert row == ("| broadcast ≥ 50,000 deliveries/s with p99 < 50 ms | **met**: 48.4k/s "
                   "delivered of 50.0k offered, p99 45 ms | **not met**: 49.4k/s delivered of "
                   "50.0k offered, p99 60 ms |")  # not met: the nearest run is shown
    row = next(line for line in text.splitlines() if line.startswith("| targeted p99"))
    assert row.endswith("| **not met**: 1,200/s of 1,500 offered, p99 30 ms, fell behind the "
                        "offered rate |")
    row = next(line for line in text.splitlines() if line.startswith("| batch REST"))
    assert row.endswith("| **met**: 9,900/s of 10.0k offered, p99 95 ms | not measured |")


def edited(point: str, **changes: Any) -> list[dict[str, Any]]:
    lines = copy.deepcopy(synthetic())
    line = next(line for line in lines if line.get("point") == point)
    for key, value in changes.items():
        if key in ("p50", "p99"):
            line["latency_ms"][key] = value
        else:
            line[key] = value
    return lines


@pytest.mark.parametrize(("point", "changes", "target", "server"), [
    ("broadcast-50k-daphne", {"p99": 60}, "broadcast", "daphne"),
    ("broadcast-50k-daphne", {"loss": 3}, "broadcast", "daphne"),
    ("broadcast-50k-daphne", {"achieved_push_rate": 45.0}, "broadcast", "daphne"),
    ("targeted-1500-daphne", {"p99": 51}, "targeted-p99", "daphne"),
    ("targeted-1500-daphne", {"achieved_push_rate": 1400}, "single-push", "daphne"),
    ("batch-10k-daphne", {"push_errors": 100}, "batch", "daphne"),
    ("idle-19000-daphne", {"kb_per_connection": 20.5}, "19,000", "daphne"),
    ("idle-19000-daphne", {"server_cpu_pct": 5.0}, "heartbeats", "daphne"),
    ("idle-19000-daphne", {"connect": {"connected": 18999, "failed": 1,
                                       "connect_per_s": 2500}}, "connect", "daphne"),
    ("workers-100k-daphne-w2", {"deliveries_per_s": 67000}, "`--workers", "daphne"),
])
def test_a_worse_measurement_flips_the_verdict(point: str, changes: dict[str, Any],
                                               target: str, server: str) -> None:
    assert verdicts(synthetic())[target, server] == "met"
    assert verdicts(edited(point, **changes))[target, server] == "not met"


def test_a_better_measurement_flips_it_back() -> None:
    lines = edited("broadcast-50k-uvicorn", p99=49.9)
    assert verdicts(lines)["broadcast", "uvicorn"] == "met"
    lines = edited("idle-19000-uvicorn", alive_at_end=19000, kb_per_connection=19.9)
    assert verdicts(lines)["19,000", "uvicorn"] == "met"


def test_later_lines_win_and_a_measurement_clears_a_skip() -> None:
    lines = [*synthetic(),
             fan("rocketmq-2000-daphne", "daphne", scenario="rocketmq", rate=2000, dps=1990,
                 achieved=1995, p50=8, p99=70),
             fan("broadcast-50k-daphne", "daphne", rate=50, dps=48000, p50=30, p99=55)]
    parsed = report.parse(json.dumps(line) for line in lines)
    assert [m["point"] for m in parsed.missing] == ["idle-19000-uvicorn-old"]
    assert sum(r["point"] == "broadcast-50k-daphne" for r in parsed.results) == 1
    got = verdicts(lines)
    assert got["RocketMQ", "daphne"] == "met" and got["broadcast", "daphne"] == "not met"


def test_the_doc_section_is_replaced_once_and_regenerated_idempotently() -> None:
    first = report.update_doc(DOC, "generated one")
    assert "## Preliminary results" not in first and "Old prose." not in first
    assert first.count(report.BEGIN) == first.count(report.END) == 1
    head = DOC.split("## Preliminary results")[0]
    assert first.startswith(head + "## Results\n\n" + report.BEGIN + "\n\ngenerated one\n\n"
                            + report.END + "\n\n## What was fixed, from the profiles\n\n- kept\n")
    assert report.update_doc(first, "generated one") == first
    second = report.update_doc(first, "generated two")
    assert second == first.replace("generated one", "generated two")
    # hand-edited prose around the markers survives
    edited_doc = second.replace("Intro prose that stays.", "Rewritten intro.")
    assert report.update_doc(edited_doc, "generated one") == first.replace(
        "Intro prose that stays.", "Rewritten intro.")


def test_a_doc_without_markers_or_section_gets_them_at_the_end() -> None:
    doc = "# Performance\n\nNothing measured yet.\n"
    out = report.update_doc(doc, "tables")
    assert out == doc + "\n## Results\n\n" + report.BEGIN + "\n\ntables\n\n" + report.END + "\n"
    assert report.update_doc(out, "tables") == out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_main_writes_the_doc_and_the_chart_and_is_idempotent(tmp_path: Path) -> None:
    source = write(tmp_path / "sweep.jsonl", synthetic())
    doc = tmp_path / "docs" / "performance.md"
    doc.parent.mkdir()
    doc.write_text(DOC)
    chart = tmp_path / "docs" / "images" / "latency-vs-load.png"
    argv = [str(source), "--doc", str(doc), "--chart", str(chart)]
    assert report.main(argv) == 0
    once = doc.read_text()
    assert "![Latency against load: broadcast and targeted pushes](images/latency-vs-load.png)" \
        in once
    assert once.startswith("# Performance\n\nIntro prose that stays.\n")
    assert once.endswith("## What was fixed, from the profiles\n\n- kept\n")
    assert "| 50.0k (50 pushes/s) |" in once and "### Targets" in once
    assert png_size(chart) == (1100, 450)
    assert chart.stat().st_size > 20_000
    assert report.main(argv) == 0
    assert doc.read_text() == once


def test_the_real_performance_page_keeps_everything_outside_the_markers(tmp_path: Path) -> None:
    original = (REPO / "docs" / "performance.md").read_text()
    out = report.update_doc(original, "generated")
    assert out.count(report.BEGIN) == 1 and report.update_doc(out, "generated") == out
    before, after = out.split(report.BEGIN)[0], out.split(report.END)[1]
    assert original.startswith(before.removesuffix(report.SECTION_TITLE + "\n\n"))
    assert original.endswith(after.lstrip("\n"))


def test_the_chart_is_drawn_without_data(tmp_path: Path) -> None:
    chart = tmp_path / "empty.png"
    report.draw_chart(report.parse([json.dumps(META)]), chart)
    assert png_size(chart) == (1100, 450)


# --- the sweep --------------------------------------------------------------------------


def test_matrix_points_are_unique_and_prefixes_select_as_documented() -> None:
    names = [p.point for p in sweep.MATRIX]
    assert len(names) == len(set(names))
    assert [p.point for p in sweep.select(["broadcast-10k"])] == [
        "broadcast-10k-baseline", "broadcast-10k-daphne", "broadcast-10k-uvicorn"]
    assert len(sweep.select(["broadcast"])) == 15
    assert {p.series for p in sweep.select(["workers"])} == {
        "daphne-workers1", "daphne-workers2", "uvicorn-workers1", "uvicorn-workers2"}
    assert [(p.rate, p.clients) for p in sweep.select(["targeted-"]) if p.series == "daphne"] \
        == [(500, 10000), (1000, 10000), (1500, 10000), (2000, 10000)]
    # every point is something bench.run accepts, and uvicorn series run uvicorn
    for p in sweep.MATRIX:
        args = sweep.bench_args(p, rocketmq_endpoint="127.0.0.1:8081", database_url=None)
        assert args[0] in {"baseline", "broadcast", "targeted", "idle", "rocketmq"}
        bare_idle = p.series == "baseline" and p.scenario == "idle"
        assert ("--server" in args) == (p.series.startswith("uvicorn") or bare_idle)
        assert report.group({"point": p.point}) in {
            "broadcast", "targeted", "batch", "rocketmq", "idle", "workers"}


def test_quick_shrinks_and_services_add_their_arguments() -> None:
    (w2,) = sweep.select(["workers-100k-daphne-w2"])
    quick = sweep.shrink(w2)
    assert (quick.clients, quick.rate, quick.duration) == (200, 10, 2)
    args = sweep.bench_args(quick, rocketmq_endpoint="x:1", database_url="postgres://db/x")
    assert args[:7] == ["broadcast", "--clients", "200", "--rate", "10", "--duration", "2"]
    assert "--workers" in args and "GATEWAY_BROKER=redis" in args
    assert "REDIS_URL=redis://127.0.0.1:6390/0" in args and "DATABASE_URL=postgres://db/x" in args
    (mq,) = sweep.select(["rocketmq-2000-uvicorn"])
    assert sweep.bench_args(mq, rocketmq_endpoint="10.0.0.1:9", database_url=None)[-2:] == [
        "--rocketmq-endpoint", "10.0.0.1:9"]
    assert sweep.shrink(sweep.select(["idle-19000-daphne"])[0]).rate is None


def test_a_closed_port_skips_and_a_failing_run_is_recorded(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    port = free_port()
    monkeypatch.setattr(sweep, "MATRIX", [
        sweep.Point("mq-1", "daphne", "rocketmq", 10, 1, 1, "", sweep.MQ),
        sweep.Point("bad-1", "daphne", "no-such-scenario", 10, 1, 1),
    ])
    monkeypatch.setattr(sweep, "SETTLE_S", 0)
    out = tmp_path / "out.jsonl"
    code = sweep.main(["--out", str(out), "--rocketmq-endpoint", f"127.0.0.1:{port}"])
    assert code == 1
    meta, skipped, error = (json.loads(line) for line in out.read_text().splitlines())
    assert meta["scenario"] == "meta" and meta["points"] == ["mq-1", "bad-1"]
    assert meta["commit"] and meta["cpu_count"] >= 1 and len(meta["loadavg"]) == 3
    assert meta["date"].endswith("+00:00")
    assert skipped["scenario"] == "skipped" and skipped["point"] == "mq-1"
    assert f"127.0.0.1:{port}" in skipped["reason"]
    assert error["scenario"] == "error" and error["point"] == "bad-1"
    assert error["returncode"] == 2 and "invalid choice" in error["stderr"]


@pytest.mark.e2e
def test_quick_sweep_point_against_the_real_gateway(tmp_path: Path) -> None:
    out = tmp_path / "quick.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "bench.sweep", "--quick", "--only", "broadcast-10k-daphne",
         "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    meta, line = (json.loads(text) for text in out.read_text().splitlines())
    assert meta["scenario"] == "meta" and meta["quick"] is True
    assert line["scenario"] == "broadcast" and line["gateway_server"] == "daphne"
    assert line["series"] == "daphne" and line["point"] == "broadcast-10k-daphne"
    assert line["clients"] == 200 and line["connect"]["connected"] == 200
    assert line["expected"] > 0 and line["loss"] == 0, line
    assert "broadcast-10k-daphne" in result.stderr
    # and the report reads it
    doc = tmp_path / "performance.md"
    doc.write_text(DOC)
    assert report.main([str(out), "--doc", str(doc), "--chart", str(tmp_path / "c.png")]) == 0
    assert "**Quick sweep**" in doc.read_text()


def test_idle_rows_are_divided_by_the_bare_server_and_it_meets_no_target() -> None:
    base = {**idle("baseline", alive=19000, kb=14.0, cpu=2.0, connect_per_s=2400),
            "server": "baseline"}
    base.pop("gateway_server")
    gateway = idle("uvicorn", alive=19000, kb=21.0, cpu=7.0, connect_per_s=1900)
    text = "\n".join(report.idle_section([gateway, base]))
    assert "| baseline | 19,000 | 19,000 | 2,400 | 0 | 14.0 |  | 2.00 |  | 400.0 |" in text
    assert "| uvicorn | 19,000 | 19,000 | 1,900 | 0 | 21.0 | 1.50x | 7.00 | 3.50x | 400.0 |" in text
    # The bare server's 14 KB must not count as the gateway meeting the memory target.
    parsed = report.parse(json.dumps(line) for line in [META, base])
    idle_verdicts = [v for v in report.evaluate(parsed.results) if "idle" in v.target]
    assert idle_verdicts and all(v.status != "met" for v in idle_verdicts)


def test_a_note_in_the_meta_line_is_shown() -> None:
    lines = report.measured_line({**META, "note": "two runs merged"}, "x.jsonl")
    assert "Note: two runs merged." in lines
    assert not any(line.startswith("Note:") for line in report.measured_line(META, "x.jsonl"))
