"""gateway_core.ratelimit: token buckets with an injected clock."""

from __future__ import annotations

from gateway_core.ratelimit import TokenBuckets


def buckets(now: list[float], **kwargs: int) -> TokenBuckets[str]:
    b: TokenBuckets[str] = TokenBuckets(**kwargs)
    b.timer = lambda: now[0]  # type: ignore[method-assign]
    return b


def test_take_spends_a_full_bucket_then_says_how_long_to_wait():
    now = [100.0]
    b = buckets(now)
    assert b.take("a", capacity=2, per_s=2) is None
    assert b.take("a", capacity=2, per_s=2) is None
    assert b.take("a", capacity=2, per_s=2) == 0.5
    assert b.take("other", capacity=2, per_s=2) is None  # a bucket per key
    now[0] += 0.5
    assert b.take("a", capacity=2, per_s=2) is None


def test_spend_and_wait_count_failures_without_refusing_them():
    now = [0.0]
    b = buckets(now)
    assert b.wait("x", capacity=2, per_s=1 / 30) is None  # never seen: full
    b.spend("x", capacity=2, per_s=1 / 30)
    assert b.wait("x", capacity=2, per_s=1 / 30) is None
    b.spend("x", capacity=2, per_s=1 / 30)
    b.spend("x", capacity=2, per_s=1 / 30)  # already empty: stays at zero
    assert b.wait("x", capacity=2, per_s=1 / 30) == 30.0
    now[0] += 30
    assert b.wait("x", capacity=2, per_s=1 / 30) is None


def test_the_table_is_bounded():
    b = buckets([0.0], max_keys=2)
    for key in ("a", "b", "c"):
        b.spend(key, capacity=1, per_s=1)
    assert len(b) == 1
