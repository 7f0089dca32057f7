"""`roomcast bench goals`: issue 11's four targets measured in one run, each with its verdict.

One command answers "are we there?" the same way each time, instead of four commands read side
by side: the join storm and the hot room against the python-socketio peer, low-load latency
against the peer, and the reconnect storm. Each measurement is an ordinary bench run (its own
table is printed as it ends); the scorecard after them says, per goal, what was measured, the
target, and by how much it was met or missed. The verdicts are pure functions of the runs'
JSON (`verdicts`), so they are tested without servers and can be re-judged from saved files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .runner import Options

# The measurements, as `roomcast bench` options (docs/performance.md names the same commands).
JOINS = {"scenario": "join-storm", "vs": "socketio"}
# Issue 11 judges fan-out "at saturation": each system's 20 writers send as fast as their acks
# allow (rate 0), so each runs at its own ceiling. (At a fixed 300 msg/s both may keep up, and a
# peer that keeps up spends 46-53 µs per delivery where one that falls behind spends 57-73:
# docs/performance.md, "Issue 11, third pass", gives both.)
FANOUT = {
    "scenario": "fanout",
    "vs": "socketio",
    "clients": 100,
    "gateways": 1,
    "rooms": 1,
    "senders": 20,
    "rate": 0.0,
    "duration": 15.0,
}
LATENCY = {
    "scenario": "fanout",
    "vs": "socketio",
    "clients": 10,
    "gateways": 1,
    "rooms": 1,
    "senders": 2,
    "rate": 20.0,
    "duration": 10.0,
}
STORM = {"scenario": "reconnect-storm", "clients": 1000}
RUNS: dict[str, dict[str, Any]] = {
    "joins": JOINS,
    "fanout": FANOUT,
    "latency": LATENCY,
    "reconnect": STORM,
}

JOINS_RATIO = 10.0  # roomcast's joins/s over the peer's
CPU_RATIO = 2.0  # deliveries per server CPU-second, roomcast over the peer
STORM_SECONDS = 5.0  # every client recovered within this long of the kill


@dataclass(frozen=True)
class Verdict:
    goal: str
    target: str
    measured: str
    met: bool
    by: str  # how far over (met) or short (missed), in the goal's own terms


def _system(run: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    systems: Mapping[str, Any] = run.get("systems") or {}
    system = systems.get(name)
    if not isinstance(system, Mapping):
        raise ValueError(f"the {run.get('scenario', '?')} run has no {name!r} system")
    return system


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def judge_joins(run: Mapping[str, Any]) -> Verdict:
    ours, peer = _system(run, "roomcast"), _system(run, "socketio")
    rate = _ratio(ours.get("joins_per_s"), peer.get("joins_per_s"))
    p99, peer_p99 = ours["join_ms"]["p99"], peer["join_ms"]["p99"]
    met = rate is not None and rate >= JOINS_RATIO and p99 is not None and p99 < peer_p99
    return Verdict(
        "joins",
        f">= {JOINS_RATIO:g}x the peer's joins/s, p99 below the peer's",
        f"{ours.get('joins_per_s')} vs {peer.get('joins_per_s')} joins/s ({_x(rate)}); "
        f"p99 {p99} vs {peer_p99} ms",
        met,
        f"{_x(rate)} of {JOINS_RATIO:g}x",
    )


def cpu_per_delivery(system: Mapping[str, Any], roles: tuple[str, ...] | None = None) -> float:
    """Server CPU µs per delivery; `roles`: only those processes (e.g. the gateways)."""
    all_us = system.get("server_cpu_us_per_delivery")
    if not all_us:
        raise ValueError("the run delivered nothing")
    if roles is None:
        return float(all_us)
    delivered = 1e6 * system["server_cpu_s"] / all_us
    by_role = system.get("server_cpu_by_role_s") or {}
    return float(1e6 * sum(by_role.get(r, 0.0) for r in roles) / delivered)


def judge_fanout(run: Mapping[str, Any]) -> Verdict:
    ours, peer = _system(run, "roomcast"), _system(run, "socketio")
    us, peer_us = cpu_per_delivery(ours), cpu_per_delivery(peer)
    front, peer_front = cpu_per_delivery(ours, ("gateway",)), cpu_per_delivery(peer, ("peer",))
    efficiency = peer_us / us
    rate = _ratio(ours["delivered_per_s"], peer["delivered_per_s"])
    met = efficiency >= CPU_RATIO and rate is not None and rate > 1.0
    return Verdict(
        "fan-out",
        f">= {CPU_RATIO:g}x the peer's deliveries per server CPU-second, more deliveries/s, "
        "at saturation",
        f"{us:.1f} vs {peer_us:.1f} µs/delivery, all server processes ({efficiency:.2f}x); "
        f"front only {front:.1f} vs {peer_front:.1f} µs; "
        f"{ours['delivered_per_s']:,.0f} vs {peer['delivered_per_s']:,.0f} delivered/s ({_x(rate)})",
        met,
        f"{efficiency:.2f}x of {CPU_RATIO:g}x",
    )


def judge_latency(run: Mapping[str, Any]) -> Verdict:
    ours, peer = _system(run, "roomcast"), _system(run, "socketio")
    p50, peer_p50 = ours["latency_ms"]["p50"], peer["latency_ms"]["p50"]
    met = p50 is not None and peer_p50 is not None and p50 <= peer_p50
    return Verdict(
        "low-load latency",
        "p50 <= the peer's",
        f"p50 {p50} vs {peer_p50} ms; p99 {ours['latency_ms']['p99']} vs "
        f"{peer['latency_ms']['p99']} ms",
        met,
        "n/a" if p50 is None or peer_p50 is None else f"{p50 - peer_p50:+.2f} ms",
    )


def judge_storm(run: Mapping[str, Any]) -> Verdict:
    ours = _system(run, "roomcast")
    clients, recovered = ours["clients"], ours["recovered"]
    last = (ours.get("recovered_ms") or {}).get("max")
    clean = ours.get("missing", 0) == 0 and ours.get("duplicates", 0) == 0
    met = recovered == clients and last is not None and last <= STORM_SECONDS * 1000 and clean
    return Verdict(
        "reconnect storm",
        f"all {clients:,} recovered within {STORM_SECONDS:g} s, none missing or repeated",
        f"{recovered:,} of {clients:,} recovered, the last after "
        f"{'n/a' if last is None else f'{last / 1000:.1f} s'}; "
        f"missing {ours.get('missing', 0)}, duplicates {ours.get('duplicates', 0)}",
        met,
        f"{recovered / clients:.0%} recovered",
    )


JUDGES: dict[str, Callable[[Mapping[str, Any]], Verdict]] = {
    "joins": judge_joins,
    "fanout": judge_fanout,
    "latency": judge_latency,
    "reconnect": judge_storm,
}


def verdicts(runs: Mapping[str, Mapping[str, Any]]) -> list[Verdict]:
    """Each goal's verdict from its run's JSON; a run that is missing or failed is a miss."""
    out = []
    for name, judge in JUDGES.items():
        run = runs.get(name)
        try:
            if run is None:
                raise ValueError("not run")
            out.append(judge(run))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            out.append(Verdict(name, "", f"no figure: {exc}", False, "n/a"))
    return out


def run(options: Options) -> dict[str, Any]:
    """Every measurement in turn, then the scorecard (and the JSON with every run in it)."""
    from . import report
    from .runner import BenchError
    from .runner import run as run_one

    if options.vs is not None or options.sweep or options.target:
        raise ValueError("goals runs its own measurements: --vs, --sweep and --target do not apply")
    runs: dict[str, dict[str, Any]] = {}
    for name, args in RUNS.items():
        one = dataclasses.replace(
            Options(**args), quiet=options.quiet, workers=options.workers, batch=options.batch
        )
        try:
            runs[name] = run_one(one)
        except BenchError as exc:
            runs[name] = {"scenario": args["scenario"], "error": str(exc)}
    result = {
        "scenario": "goals",
        "runs": runs,
        "verdicts": [dataclasses.asdict(v) for v in verdicts(runs)],
    }
    print_scorecard(result)
    if options.json_path is not None:
        report.write_json(result, options.json_path)
    return result


def print_scorecard(result: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="roomcast bench goals (issue 11)")
    for column in ("goal", "target", "measured", "verdict"):
        table.add_column(column, overflow="fold")
    for v in result["verdicts"]:
        verdict = f"met ({v['by']})" if v["met"] else f"missed ({v['by']})"
        table.add_row(v["goal"], v["target"], v["measured"], verdict)
    Console().print(table)
