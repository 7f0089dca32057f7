"""What `--sweep` shows: each system's steps, the knees side by side, and a plot of p99 and
delivered messages against the offered rate (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

COLORS = {"roomcast": "tab:blue", "socketio": "tab:orange"}


def _p(block: Mapping[str, Any] | None, key: str) -> str:
    value = None if block is None else block.get(key)
    return "-" if value is None else f"{value:,.1f}"


def print_table(result: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=140)
    params, sweep = result["params"], result["sweep"]
    console.print(
        f"roomcast bench {params['scenario']} --sweep: {params['clients']} clients, "
        f"{params['gateways']} gateway(s), {params['rooms']} rooms, {params['senders']} senders, "
        f"{params['duration']:g}s a step, p99 limit {sweep['limit_ms']:g} ms",
        highlight=False,
    )
    steps = Table(title="steps")
    for column in ("system", "msg/s", "offered deliveries/s", "delivered/s", "p50 ms", "p99 ms"):
        steps.add_column(column, justify="right")
    steps.add_column("verdict")
    for name, entry in result["systems"].items():
        for step in entry["steps"]:
            steps.add_row(
                name,
                f"{step['rate']:g}",
                f"{step['offered_deliveries_per_s']:,.0f}",
                f"{step['delivered_per_s']:,.0f}",
                _p(step["latency_ms"], "p50"),
                _p(step["latency_ms"], "p99"),
                "pass" if step["passed"] else f"fail: {step['why']}",
            )
    console.print(steps)
    knees = Table(title=f"knee: the highest rate with p99 <= {sweep['limit_ms']:g} ms")
    knees.add_column("")
    names = list(result["systems"])
    for name in names:
        knees.add_column(name, justify="right")
    with_ratio = result.get("ratio") is not None
    if with_ratio:
        knees.add_column("roomcast / peer", justify="right")
    found = [result["systems"][n]["knee"] for n in names]

    def row(label: str, cells: list[str], ratio_value: float | None = None) -> None:
        extra = [] if not with_ratio else ["-" if ratio_value is None else f"{ratio_value:.2f}x"]
        knees.add_row(label, *cells, *extra)

    ratio = result.get("ratio") or {}
    row("msg/s", ["-" if k is None else f"{k['rate']:g}" for k in found], ratio.get("knee_rate"))
    row(
        "delivered/s",
        ["-" if k is None else f"{k['delivered_per_s']:,.0f}" for k in found],
        ratio.get("knee_delivered_per_s"),
    )
    row("p99 ms there", [_p(k and k["latency_ms"], "p99") for k in found])
    lowest = [
        min((s["rate"] for s in result["systems"][n]["steps"] if not s["passed"]), default=None)
        for n in names
    ]
    row("first failing msg/s", ["-" if r is None else f"{r:g}" for r in lowest])
    console.print(knees)
    for note in result.get("notes", []):
        console.print(f"[dim]- {note}[/dim]")


def plot(result: Mapping[str, Any], path: Path) -> None:
    """p99 (log) and delivered/s against offered deliveries/s; the limit dashed, knees ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    limit = result["sweep"]["limit_ms"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    top = 0.0
    for name, entry in result["systems"].items():
        color = COLORS.get(name)
        steps = sorted(
            (s for s in entry["steps"] if s["latency_ms"]["p99"] is not None),
            key=lambda s: s["rate"],
        )
        xs = [s["offered_deliveries_per_s"] for s in steps]
        left.plot(xs, [s["latency_ms"]["p99"] for s in steps], "o-", color=color, label=name)
        right.plot(xs, [s["delivered_per_s"] for s in steps], "o-", color=color, label=name)
        top = max([top, *xs])
        found = entry["knee"]
        if found is not None:
            x = found["offered_deliveries_per_s"]
            left.plot([x], [found["latency_ms"]["p99"]], "o", ms=14, mfc="none", color=color)
            right.axvline(x, color=color, linestyle=":", linewidth=1)
    left.axhline(limit, color="grey", linestyle="--", linewidth=1, label=f"limit {limit:g} ms")
    left.set_yscale("log")
    left.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    left.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    left.set_xlabel("offered deliveries/s")
    left.set_ylabel("end-to-end p99, ms")
    left.set_title(f"{result['scenario']} sweep: p99 (ringed: knee)")
    left.legend()
    if top:
        right.plot([0, top], [0, top], color="grey", linewidth=0.8, label="all delivered")
    right.set_xlabel("offered deliveries/s")
    right.set_ylabel("delivered/s")
    right.set_title("delivered against offered (dotted: knee)")
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
