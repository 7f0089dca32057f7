"""`roomcast bench --sweep`'s schedule, verdict and knee, and `reconnect-storm`'s summary: pure
functions, no servers, no timing."""

from __future__ import annotations

import random
from typing import Any

import pytest

from roomcast.bench.reconnectclient import StormClient, backoff
from roomcast.bench.reconnectreport import summarize
from roomcast.bench.scenarios import build_plan, resolve, with_overrides
from roomcast.bench.stats import prometheus_counters
from roomcast.bench.sweep import knee, next_rate, offered_deliveries, verdict

pytestmark = pytest.mark.unit


def _step(rate: float, passed: bool) -> dict[str, Any]:
    return {
        "rate": rate,
        "passed": passed,
        "offered_deliveries_per_s": rate * 99,
        "delivered_per_s": rate * 99,
        "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0},
    }


def test_the_rate_doubles_while_steps_pass() -> None:
    assert next_rate([], 25.0, 8) == 25.0
    assert next_rate([_step(25, True)], 25.0, 8) == 50.0
    assert next_rate([_step(25, True), _step(50, True)], 25.0, 8) == 100.0


def test_after_a_failure_it_bisects_until_the_resolution() -> None:
    steps = [_step(100, True), _step(200, True), _step(400, False)]
    assert next_rate(steps, 100.0, 8) == 300.0
    steps.append(_step(300, False))
    assert next_rate(steps, 100.0, 8) == 250.0
    steps.append(_step(250, True))
    assert next_rate(steps, 100.0, 8) == 275.0
    steps.append(_step(275, True))
    assert next_rate(steps, 100.0, 8) is None  # (300 - 275) / 275 < RESOLUTION


def test_a_first_failure_halves_and_max_steps_stops() -> None:
    assert next_rate([_step(100, False)], 100.0, 8) == 50.0
    assert next_rate([_step(100, False), _step(50, False)], 100.0, 8) == 25.0
    assert next_rate([_step(100, True), _step(200, True)], 100.0, 2) is None


def test_knee_is_the_highest_pass_below_every_failure() -> None:
    steps = [_step(100, True), _step(400, False), _step(200, True), _step(300, False)]
    found = knee(steps)
    assert found is not None and found["rate"] == 200 and found["first_failure"] == 300
    # a pass above a failure is noise, not the knee
    assert knee([_step(100, True), _step(200, False), _step(250, True)])["rate"] == 100  # type: ignore[index]
    assert knee([_step(100, False)]) is None
    assert knee([_step(100, True)])["first_failure"] is None  # type: ignore[index]


def test_verdict_says_why_a_step_fails() -> None:
    good = {"latency_ms": {"p99": 40.0}, "undelivered": 0, "errors": 0}
    assert verdict(good, 50.0) == (True, "")
    assert verdict({**good, "latency_ms": {"p99": 60.0}}, 50.0) == (False, "p99 60 ms > 50 ms")
    assert verdict({**good, "undelivered": 3, "errors": 2}, 50.0) == (
        False,
        "3 undelivered; 2 errors",
    )
    assert verdict({**good, "latency_ms": {"p99": None}}, 50.0)[1] == "nothing delivered"


def test_offered_deliveries_count_the_other_members_of_each_writer_room() -> None:
    config = resolve("fanout")  # 10 rooms of 100, 2 writers each
    assert offered_deliveries(with_overrides(config, rate=100.0)) == pytest.approx(9900.0)
    small = resolve("fanout", clients=20)  # one room of 20, 2 writers
    assert offered_deliveries(with_overrides(small, rate=10.0)) == pytest.approx(190.0)


def test_backoff_is_the_web_clients_equal_jitter() -> None:
    rng = random.Random(1)
    for attempt, window in ((0, 1.0), (1, 2.0), (3, 8.0), (10, 30.0)):
        delay = backoff(attempt, rng)
        assert window / 2 <= delay <= window


def test_storm_summary_counts_recovery_gaps_and_repeats() -> None:
    t_ready, t_kill = 100.0, 110.0
    writer = StormClient(0, "w", "r")
    writer.acked = [("old", 99.0), ("m1", 105.0), ("m2", 111.0), ("m3", 112.0)]
    back = StormClient(0, "a", "r")
    back.seen, back.duplicates, back.attempts = {"old", "m1", "m2", "m3"}, 1, 1
    back.lost_at, back.opened_at, back.recovered_at = 110.01, 111.0, 111.5
    gap = StormClient(1, "b", "r")
    gap.seen, gap.attempts, gap.connections = {"m1", "m3"}, 2, 2
    gap.lost_at, gap.opened_at, gap.recovered_at = 110.02, 112.0, 113.0
    never = StormClient(2, "c", "r")
    never.attempts, never.failure, never.lost_at = 3, "recovered: false", 110.03
    entry = summarize([back, gap, never], [writer], t_ready, t_kill)
    assert entry["clients"] == 3 and entry["recovered"] == 2
    assert entry["unrecovered"] == [{"username": "c", "room": "r", "why": "recovered: false"}]
    assert entry["recovered_after_ms"] == [1500.0, 3000.0]
    assert entry["recovered_ms"]["max"] == pytest.approx(3000.0, rel=0.02)
    assert entry["messages_posted"] == 3  # "old" came before everyone had joined
    assert (entry["missing"], entry["users_missing"], entry["duplicates"]) == (1, 1, 1)
    assert entry["attempts"] == {"1": 1, "2": 1, "3": 1}
    assert entry["connections"] == 2


def test_prometheus_counters_by_label_set() -> None:
    text = (
        "# HELP roomcast_presence_ops_total Presence requests handled\n"
        "# TYPE roomcast_presence_ops_total counter\n"
        'roomcast_presence_ops_total{op="join",outcome="ok"} 12.0\n'
        'roomcast_presence_ops_total{op="leave",outcome="ok"} 3.0\n'
        'roomcast_presence_ops_created{op="join",outcome="ok"} 1.7e+09\n'
    )
    assert prometheus_counters(text, "roomcast_presence_ops_total") == {
        'op="join",outcome="ok"': 12.0,
        'op="leave",outcome="ok"': 3.0,
    }


def test_bench_names_are_distinct_under_the_confusables_skeleton() -> None:
    from roomcast.shared.names import username_key

    plan = build_plan(resolve("join-storm"), ["ws://127.0.0.1:1"], "ab12cd0r")
    names = [c.username for c in plan.clients + plan.loaders]
    assert len(plan.loaders) == 20
    assert len({username_key(n) for n in names}) == len(names)
