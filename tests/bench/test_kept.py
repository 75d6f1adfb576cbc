"""The kept-push benchmark's pure helpers (``bench/kept.py``): frame ids, percentiles, ratios
and the loss count. No gateway, no timing."""

from __future__ import annotations

import math

from bench.kept import loss_report, percentile_ms, push_id, ratio


def test_push_id_is_read_from_the_gateways_compact_frame() -> None:
    frame = b'{"type":"push","id":"01a2ff","topic":null,"data":{"t":1.5},"ts":1}'
    assert push_id(frame) == "01a2ff"
    assert push_id(bytearray(frame + b"tail")) == "01a2ff"
    assert push_id(b'{"type":"push","id":"01a2ff","redelivered":true}') == "01a2ff"


def test_push_id_of_a_frame_without_one_is_none() -> None:
    assert push_id(b'{"type":"pong","ts":1}') is None
    assert push_id(b'{"type":"push","id":"') is None


def test_percentile_ms_takes_the_nearest_rank_below_in_milliseconds() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile_ms(values, 0.5) == 51.0
    assert percentile_ms(values, 0.99) == 100.0
    assert percentile_ms(values, 1.0) == 100.0
    assert percentile_ms([0.0123456], 0.5) == 12.35
    assert percentile_ms([], 0.5) is None


def test_ratio_rounds_and_refuses_a_zero_denominator() -> None:
    assert ratio(80, 100) == 0.8
    assert ratio(2, 3) == 0.667
    assert ratio(1, 0) is None
    assert not math.isnan(ratio(0, 5) or 0.0)


def test_loss_report_counts_accepted_pushes_their_user_never_got() -> None:
    accepted = {"u1": {"a", "b"}, "u2": {"c"}, "u3": set()}
    received = {"u1": {"a", "b", "z"}, "u2": set()}
    assert loss_report(accepted, received) == {"accepted": 3, "lost": 1}
    assert loss_report({"u1": {"a"}}, {}) == {"accepted": 1, "lost": 1}
