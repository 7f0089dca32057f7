"""`roomcast bench SCENARIO --sweep`: find each system's knee, the highest offered rate whose
end-to-end p99 stays under a limit (default 50 ms).

The rate starts at `--rate` (or the preset's) and doubles while steps pass; after the first
failure it bisects between the highest pass and the lowest failure until they are within
`RESOLUTION` of each other (or the first step failed: it halves until one passes). A step
passes when its p99 is at most the limit and nothing went wrong: no message undelivered, no
error. Each step is one measurement on a fresh deployment (a backlog left by an overloaded step
must not slow the next one); with `--vs socketio` the peer is swept the same way after roomcast.

The schedule and the knee are pure functions (`next_rate`, `knee`), tested on their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import sweepreport
from .runner import Bench, Options, drive, publish
from .scenarios import Config, build_plan, with_overrides
from .stats import ratio, summarize_system

FACTOR = 2.0  # rate multiplier while every step passes
RESOLUTION = 0.15  # stop bisecting once (fail - pass) / pass is below this
STEP_KEYS = (
    "delivered_per_s",
    "acks_per_s",
    "latency_ms",
    "errors",
    "errors_by_kind",
    "undelivered",
    "server_cpu_s",
    "server_cpu_us_per_delivery",
    "broker_cpu_s",
    "other_cpu_s",
    "loadgen_cpu_pct",
)


def next_rate(steps: Sequence[Mapping[str, Any]], start: float, max_steps: int) -> float | None:
    """The next rate to measure after `steps` (each with "rate" and "passed"), or None when
    the knee is found to `RESOLUTION` or `max_steps` are done."""
    if not steps:
        return start
    if len(steps) >= max_steps:
        return None
    passed = [s["rate"] for s in steps if s["passed"]]
    failed = [s["rate"] for s in steps if not s["passed"]]
    if not failed:
        return float(max(passed) * FACTOR)
    hi = float(min(failed))
    below = [r for r in passed if r < hi]
    if not below:
        return hi / FACTOR
    lo = float(max(below))
    if (hi - lo) / lo < RESOLUTION:
        return None
    return (lo + hi) / 2


def verdict(entry: Mapping[str, Any], limit_ms: float) -> tuple[bool, str]:
    """Whether a measurement passes, and why not."""
    p99 = entry["latency_ms"]["p99"]
    why = []
    if p99 is None:
        why.append("nothing delivered")
    elif p99 > limit_ms:
        why.append(f"p99 {p99:g} ms > {limit_ms:g} ms")
    if entry.get("undelivered"):
        why.append(f"{entry['undelivered']} undelivered")
    if entry.get("errors"):
        why.append(f"{entry['errors']} errors")
    return not why, "; ".join(why)


def knee(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The passing step of the highest rate below every failure (None when none passed)."""
    failed = [s["rate"] for s in steps if not s["passed"]]
    ceiling = min(failed) if failed else float("inf")
    passing = [s for s in steps if s["passed"] and s["rate"] < ceiling]
    if not passing:
        return None
    best = max(passing, key=lambda s: s["rate"])
    return {
        "rate": best["rate"],
        "offered_deliveries_per_s": best["offered_deliveries_per_s"],
        "delivered_per_s": best["delivered_per_s"],
        "latency_ms": best["latency_ms"],
        "first_failure": min(failed) if failed else None,
    }


def offered_deliveries(config: Config) -> float:
    """Deliveries per second the rate asks for: each writer's share of the rate times the
    other members of its room."""
    plan = build_plan(config, ["ws://127.0.0.1:1"], "x")
    sizes = plan.room_sizes()
    senders = [c for c in plan.clients if c.role == "sender"]
    if not senders:
        return 0.0
    share = config.rate / len(senders)
    return round(sum(share * (sizes[c.room] - 1) for c in senders), 1)


class Sweep:
    def __init__(self, options: Options, config: Config) -> None:
        if config.mode != "chat":
            raise ValueError("--sweep applies to the chat scenarios (fanout, chatty)")
        if options.target:
            raise ValueError("--sweep starts its own deployments; it does not take --target")
        if options.rounds != 1:
            raise ValueError("--sweep takes no --rounds (each step is one measurement)")
        self.options = options
        self.base = config
        self.start = config.rate if config.rate > 0 else 10.0
        self.bench = Bench(options, config)

    async def system(self, system: str) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = []
        while (rate := next_rate(steps, self.start, self.options.steps)) is not None:
            rate = round(rate, 2)
            config = with_overrides(self.base, rate=rate)
            self.bench.config = config
            self.bench.progress.note(f"{system}: {rate:g} msg/s")
            async with self.bench.deployed(system) as deployment:
                tag = f"{self.bench.run_id}{len(steps)}{system[0]}"
                run = await self.bench.measure(system, deployment, tag)
            entry = summarize_system(
                run["workers"],
                window_s=run["window"],
                server=run["server"],
                expected_deliveries=run["expected"],
            )
            passed, why = verdict(entry, self.options.limit)
            steps.append(
                {
                    "rate": rate,
                    "offered_deliveries_per_s": offered_deliveries(config),
                    **{k: entry.get(k) for k in STEP_KEYS},
                    "passed": passed,
                    "why": why,
                }
            )
        return steps

    async def main(self) -> dict[str, Any]:
        systems = ["roomcast"] + ([self.options.vs] if self.options.vs else [])
        entries: dict[str, Any] = {}
        async with self.bench.session():
            for system in systems:
                steps = await self.system(system)
                entries[system] = {"steps": steps, "knee": knee(steps)}
        return self.result(entries)

    def result(self, entries: dict[str, Any]) -> dict[str, Any]:
        base = self.bench.result({})  # the run's params, machine, command and notes
        ours = (entries.get("roomcast") or {}).get("knee")
        theirs = (entries.get(self.options.vs or "") or {}).get("knee")
        return {
            "tool": base["tool"],
            "schema": base["schema"],
            "scenario": base["scenario"],
            "run_id": base["run_id"],
            "sweep": {
                "limit_ms": self.options.limit,
                "start_rate": self.start,
                "factor": FACTOR,
                "resolution": RESOLUTION,
                "max_steps": self.options.steps,
            },
            "params": {**base["params"], "rate": None},
            "machine": base["machine"],
            "command": base["command"],
            "systems": entries,
            "ratio": {
                "knee_rate": ratio(ours and ours["rate"], theirs and theirs["rate"]),
                "knee_delivered_per_s": ratio(
                    ours and ours["delivered_per_s"], theirs and theirs["delivered_per_s"]
                ),
            }
            if self.options.vs
            else None,
            "notes": [
                *base["notes"],
                "each step is a fresh deployment; a step passes when p99 <= the limit with "
                "nothing undelivered and no error",
            ],
        }


def run(options: Options, config: Config) -> dict[str, Any]:
    result = drive(Sweep(options, config).main)
    return publish(result, options, sweepreport.print_table, sweepreport.plot)
