"""`roomcast bench goals`: the verdicts are judged from the runs' JSON exactly as the issue words
each target (no servers here: the runs are made up, shaped as the bench writes them)."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from roomcast.bench import goals
from roomcast.cli import cli


def joins(ours: float, peer: float, p99: float, peer_p99: float) -> dict[str, Any]:
    return {
        "scenario": "join-storm",
        "systems": {
            "roomcast": {"joins_per_s": ours, "join_ms": {"p99": p99}},
            "socketio": {"joins_per_s": peer, "join_ms": {"p99": peer_p99}},
        },
    }


def fanout(
    ours_us: float, peer_us: float, ours_rate: float, peer_rate: float, gateway_s: float = 1.0
) -> dict[str, Any]:
    def system(us: float, rate: float, front: str, front_s: float) -> dict[str, Any]:
        return {
            "server_cpu_us_per_delivery": us,
            "server_cpu_s": 2.0,
            "server_cpu_by_role_s": {front: front_s, "db": 2.0 - front_s},
            "delivered_per_s": rate,
        }

    return {
        "scenario": "fanout",
        "systems": {
            "roomcast": system(ours_us, ours_rate, "gateway", gateway_s),
            "socketio": system(peer_us, peer_rate, "peer", 1.5),
        },
    }


def latency(p50: float, peer_p50: float) -> dict[str, Any]:
    return {
        "scenario": "fanout",
        "systems": {
            "roomcast": {"latency_ms": {"p50": p50, "p99": 2 * p50}},
            "socketio": {"latency_ms": {"p50": peer_p50, "p99": 2 * peer_p50}},
        },
    }


def storm(recovered: int, last_ms: float, missing: int = 0, duplicates: int = 0) -> dict[str, Any]:
    entry = {
        "clients": 1000,
        "recovered": recovered,
        "recovered_ms": {"max": last_ms},
        "missing": missing,
        "duplicates": duplicates,
    }
    return {"scenario": "reconnect-storm", "systems": {"roomcast": entry}}


def test_joins_need_ten_times_the_rate_and_a_better_p99() -> None:
    assert goals.judge_joins(joins(410, 40, 900, 1000)).met
    assert not goals.judge_joins(joins(399, 40, 900, 1000)).met  # 9.98x
    missed = goals.judge_joins(joins(410, 40, 1000, 1000))  # p99 only equal
    assert not missed.met
    assert missed.by == "10.25x of 10x"


def test_fanout_needs_half_the_cpu_per_delivery_and_more_deliveries() -> None:
    assert goals.judge_fanout(fanout(20, 40, 20_000, 19_000)).met
    assert not goals.judge_fanout(fanout(21, 40, 20_000, 19_000)).met
    assert not goals.judge_fanout(fanout(20, 40, 19_000, 19_000)).met  # not more delivered


def test_cpu_per_delivery_of_some_roles_counts_their_share() -> None:
    system = fanout(40, 80, 1, 1, gateway_s=0.5)["systems"]["roomcast"]
    assert goals.cpu_per_delivery(system) == 40
    assert goals.cpu_per_delivery(system, ("gateway",)) == pytest.approx(10)  # a quarter of 2 s


def test_low_load_latency_is_met_at_or_below_the_peers_p50() -> None:
    assert goals.judge_latency(latency(2.5, 2.5)).met
    missed = goals.judge_latency(latency(3.0, 2.5))
    assert not missed.met
    assert missed.by == "+0.50 ms"


def test_the_storm_needs_everyone_back_in_five_seconds_with_nothing_lost() -> None:
    assert goals.judge_storm(storm(1000, 4_900)).met
    assert not goals.judge_storm(storm(999, 4_900)).met
    assert not goals.judge_storm(storm(1000, 5_100)).met
    assert not goals.judge_storm(storm(1000, 4_900, missing=1)).met
    assert not goals.judge_storm(storm(1000, 4_900, duplicates=1)).met


def test_a_run_that_is_missing_or_failed_is_a_miss_that_says_why() -> None:
    found = goals.verdicts({"joins": joins(410, 40, 900, 1000), "fanout": {"error": "boom"}})
    by_goal = {v.goal: v for v in found}
    assert by_goal["joins"].met
    assert [v.met for v in found] == [True, False, False, False]
    assert "no figure" in by_goal["fanout"].measured
    assert "not run" in by_goal["latency"].measured


def test_goals_refuses_options_it_sets_itself() -> None:
    result = CliRunner().invoke(cli, ["bench", "goals", "--vs", "socketio"])
    assert result.exit_code == 2
    assert "goals runs its own measurements" in result.output
