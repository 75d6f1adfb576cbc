"""bench.apps on synthetic measurements: the side order and the two-apps ÷ one-app ratios
and their pass flag (no servers, nothing timed)."""

from __future__ import annotations

from typing import Any

from bench import apps

ONE, TWO = apps.ONE, apps.TWO


def run(kind: str, layout: str, *, dps: float, cpu_us: float = 10.0, p50: float = 5.0,
        p99: float = 20.0, loss: int = 0, errors: int = 0, failed: int = 0) -> dict[str, Any]:
    return {
        "kind": kind, "layout": layout, "deliveries_per_s": dps,
        "server_cpu_us_per_delivery": cpu_us, "latency_ms": {"p50": p50, "p99": p99},
        "loss": loss, "push_errors": errors, "connect": {"connected": 100, "failed": failed},
    }


def test_side_order_alternates_which_side_goes_first() -> None:
    one, two, control = apps.ONE, apps.TWO, apps.CONTROL
    assert apps.side_order(1) == [one, two]
    assert apps.side_order(3) == [one, two, two, one, one, two]
    assert apps.side_order(2, control=True) == [one, two, control, control, two, one]


def test_ratios_are_two_apps_over_one_app_means() -> None:
    (line,) = apps.compare([
        run("broadcast", apps.ONE, dps=50_000, cpu_us=10.0, p50=8, p99=20),
        run("broadcast", apps.TWO, dps=48_000, cpu_us=11.0, p50=8, p99=30),
        run("broadcast", apps.TWO, dps=49_000, cpu_us=11.0, p50=10, p99=30),
        run("broadcast", apps.ONE, dps=49_000, cpu_us=12.0, p50=8, p99=20),
    ])
    assert line["scenario"] == "apps-ratio" and line["kind"] == "broadcast"
    assert line["one_app"]["deliveries_per_s"] == 49_500
    assert line["two_apps"]["deliveries_per_s"] == 48_500
    assert line["two_apps"]["rounds"] == 2
    assert line["throughput_ratio"] == round(48_500 / 49_500, 3)
    # Round k of each side: (50k, 48k) and (49k, 49k).
    assert line["round_throughput_ratios"] == [0.96, 1.0]
    assert line["cpu_per_delivery_ratio"] == 1.0
    assert line["p50_ratio"] == 1.125 and line["p99_ratio"] == 1.5
    assert line["pass"] is True


def test_a_ratio_under_the_bound_fails() -> None:
    (line,) = apps.compare([run("targeted", ONE, dps=1000), run("targeted", TWO, dps=949)])
    assert line["throughput_ratio"] == 0.949
    assert line["clean"] is True and line["pass"] is False
    (line,) = apps.compare([run("targeted", ONE, dps=1000), run("targeted", TWO, dps=950)])
    assert line["pass"] is True


def test_a_lossy_side_fails_whatever_the_ratio() -> None:
    for bad in ({"loss": 3}, {"loss": -1}, {"errors": 1}, {"failed": 1}):
        (line,) = apps.compare([run("targeted", ONE, dps=1000),
                                run("targeted", TWO, dps=1000, **bad)])
        assert line["throughput_ratio"] == 1.0
        assert line["clean"] is False and line["pass"] is False, bad


def test_the_control_separates_the_apps_cost_from_the_pushes_cost() -> None:
    (line,) = apps.compare([
        run("broadcast", apps.ONE, dps=50_000, cpu_us=9.0),
        run("broadcast", apps.TWO, dps=50_000, cpu_us=10.0),
        run("broadcast", apps.CONTROL, dps=40_000, cpu_us=10.0, loss=5),
    ])
    assert line["control"]["deliveries_per_s"] == 40_000
    assert line["two_apps_vs_control_throughput_ratio"] == 1.25
    assert line["two_apps_vs_control_cpu_ratio"] == 1.0
    assert line["control_vs_one_app_cpu_ratio"] == 1.111
    # The control informs; the verdict is two apps against one.
    assert line["pass"] is True
    (plain,) = apps.compare([run("broadcast", apps.ONE, dps=1), run("broadcast", apps.TWO, dps=1)])
    assert "control" not in plain


def test_one_line_per_kind_and_none_without_both_sides() -> None:
    lines = apps.compare([
        run("broadcast", apps.ONE, dps=100), run("broadcast", apps.TWO, dps=100),
        run("targeted", ONE, dps=100),
    ])
    assert [line["kind"] for line in lines] == ["broadcast"]
