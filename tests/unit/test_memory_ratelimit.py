"""A connection's token buckets: the same budget as before, and nothing of their own until the
first spend (every socket holds four; most never spend from most of them)."""

from __future__ import annotations

import tracemalloc

import pytest

from roomcast.gateway import ratelimit
from roomcast.gateway.ratelimit import TokenBucket
from tests.support import heap
from tests.support.clock import Clock

pytestmark = pytest.mark.unit


def test_a_bucket_starts_full_refills_at_its_rate_and_never_beyond_its_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    clock.now += 3600  # unused for an hour: still a burst of 3, not more
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.25  # half a token
    assert not bucket.take()
    clock.now += 0.25  # the other half
    assert bucket.take()
    assert not bucket.take()
    clock.now += 100
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_an_unused_bucket_holds_nothing_but_itself() -> None:
    n = 1000
    rate, burst = 5.0, 10
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        buckets = [TokenBucket(rate, burst) for _ in range(n)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = heap.held(before, after, (ratelimit.__file__, __file__))
    assert len(buckets) == n
    # the slotted object and its place in the list (it was 152 B with three floats of its own)
    assert held / n <= 100, f"{held / n:.0f} B per unused bucket"
