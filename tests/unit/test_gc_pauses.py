"""Garbage-collector pauses (shared/gcpauses.py): every collection is timed into
`roomcast_gc_pause_seconds{generation}`, a long one is logged with its length, and a run of them
does not flood the log."""

from __future__ import annotations

import gc

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from roomcast.shared import gcpauses
from roomcast.shared.gcpauses import PauseWatch
from tests.support.clock import Clock

pytestmark = pytest.mark.unit


def _count(generation: int) -> float:
    value = REGISTRY.get_sample_value(
        "roomcast_gc_pause_seconds_count", {"generation": str(generation)}
    )
    return value or 0.0


def test_a_real_collection_is_timed_by_the_watch_installed_once() -> None:
    watcher = gcpauses.watch()
    try:
        assert gcpauses.watch() is watcher  # once per process
        assert sum(isinstance(c, PauseWatch) for c in gc.callbacks) == 1
        before = _count(2)
        gc.collect()
        assert _count(2) == before + 1
    finally:
        gc.callbacks.remove(watcher)


def test_a_long_pause_is_logged_and_a_run_of_them_is_throttled() -> None:
    clock = Clock(100.0)
    watch = PauseWatch(clock)
    with capture_logs() as logs:
        for _ in range(3):  # three 250 ms full collections within a second
            watch("start", {"generation": 2})
            clock.now += 0.25
            watch("stop", {"generation": 2, "collected": 7})
        clock.now += gcpauses.LOG_EVERY
        watch("start", {"generation": 2})
        clock.now += 0.3
        watch("stop", {"generation": 2, "collected": 1})
        watch("start", {"generation": 0})
        clock.now += 0.001  # a short one: counted, not logged
        watch("stop", {"generation": 0, "collected": 0})
    slow = [e for e in logs if e["event"] == "long garbage collection"]
    assert [(e["pause_ms"], e["left_out"]) for e in slow] == [(250.0, 0), (300.0, 2)]
    assert all(e["generation"] == 2 and e["log_level"] == "warning" for e in slow)


def test_settle_freezes_start_up_and_collects_young_objects_less_often() -> None:
    before = gc.get_threshold()
    try:
        gcpauses.settle()
        assert gc.get_freeze_count() > 0  # start-up's objects are out of the collector's sight
        young, middle, old = gc.get_threshold()
        assert young == gcpauses.YOUNG > before[0]
        assert (middle, old) == before[1:]  # full collections still come as often as Python's

        class Node:
            def __init__(self) -> None:
                self.me = self

        Node()  # a cycle made after start-up: unreachable, and still collected
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
