"""What a run shows: a table at the end (rich), the JSON file, and the plots (matplotlib, Agg):
a latency histogram and throughput over time, one series per system."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .stats import Histogram


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ms(block: Mapping[str, Any], key: str) -> str:
    value = block.get(key)
    return "-" if value is None else f"{value:.2f}"


def rows(result: Mapping[str, Any]) -> list[tuple[str, list[str], str]]:
    """(label, one cell per system, ratio cell) for the end-of-run table."""
    systems: Mapping[str, Mapping[str, Any]] = result["systems"]
    names = list(systems)
    ratio: Mapping[str, Any] = result.get("ratio") or {}
    out: list[tuple[str, list[str], str]] = []

    def add(label: str, cells: list[str], ratio_cell: Any = None) -> None:
        out.append((label, cells, "" if ratio_cell is None else f"{ratio_cell:.2f}x"))

    def each(key: str, digits: int = 1) -> list[str]:
        return [_num(systems[n].get(key), digits) for n in names]

    mode = result["params"]["mode"]
    if mode == "chat":
        add("delivered msgs/s", each("delivered_per_s"), ratio.get("delivered_per_s"))
        add("acks/s", each("acks_per_s"))
        for q in ("p50", "p90", "p99", "max"):
            add(
                f"latency {q} (ms)",
                [_ms(systems[n]["latency_ms"], q) for n in names],
                ratio.get("latency_ms.p99") if q == "p99" else None,
            )
        if any("gateway_fanout_ms" in systems[n] for n in names):
            cells = []
            for n in names:
                block = systems[n].get("gateway_fanout_ms") or {}
                p50, p99 = block.get("p50"), block.get("p99")
                cells.append("-" if p50 is None else f"≤{p50:g} / ≤{p99:g}" if p99 else f"≤{p50:g}")
            add("gateway publish→queued p50/p99 (ms)", cells)
        stages: list[str] = []
        for n in names:
            stages += [s for s in systems[n].get("gateway_stages_ms") or {} if s not in stages]
        for stage in stages:
            cells = []
            for n in names:
                block = (systems[n].get("gateway_stages_ms") or {}).get(stage) or {}
                p50, p99, top = block.get("p50"), block.get("p99"), block.get("max")
                cell = "-" if p50 is None else f"≤{p50:g} / ≤{p99:g}" if p99 else f"≤{p50:g}"
                slowest = f"≤{top:g}" if top else ">1s"
                cells.append(cell if p50 is None else f"{cell} / {slowest}")
            add(f"stage {stage} p50/p99/max (ms)", cells)
        add("undelivered", each("undelivered"))
        add("server CPU µs / delivery", each("server_cpu_us_per_delivery", 2))
    if mode == "joins":
        add("joins/s", each("joins_per_s"))
    if mode in ("joins", "idle") or any(systems[n]["join_ms"]["p50"] is not None for n in names):
        for q in ("p50", "p90", "p99", "max"):
            add(
                f"join {q} (ms)",
                [_ms(systems[n]["join_ms"], q) for n in names],
                ratio.get("join_ms.p99") if q == "p99" else None,
            )
    add("errors", each("errors"))
    add("server CPU (s)", each("server_cpu_s", 2))
    add("server CPU (% of a core)", each("server_cpu_pct"))
    add("broker CPU (s)", each("broker_cpu_s", 2))
    add("other processes' CPU (s)", each("other_cpu_s", 2))
    add("server peak RSS (MB)", each("server_rss_mb"))
    add("gateway RSS / connection (KB)", each("rss_per_conn_kb"))
    add("load generator CPU (s)", each("loadgen_cpu_s", 2))
    add("load generator busy (%/process)", each("loadgen_cpu_pct"))
    return out


def print_table(result: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    systems = list(result["systems"])
    params = result["params"]
    title = (
        f"roomcast bench {params['scenario']}: {params['clients']} clients, "
        f"{params['gateways']} gateway(s), {params['rooms']} rooms, {params['senders']} senders, "
        f"rate {params['rate'] or 'ack-paced'}, {params['duration']:g}s"
    )
    table = Table()
    table.add_column("metric")
    for name in systems:
        table.add_column(name, justify="right")
    with_ratio = len(systems) > 1
    if with_ratio:
        table.add_column("roomcast / peer", justify="right")
    for label, cells, ratio_cell in rows(result):
        table.add_row(label, *cells, *([ratio_cell] if with_ratio else []))
    console = Console() if Console().is_terminal else Console(width=120)
    console.print(title, highlight=False)
    console.print(table)
    for note in result.get("notes", []):
        console.print(f"[dim]- {note}[/dim]")


def write_json(result: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")


def log_bins(hist: Histogram, per_decade: int = 24) -> tuple[list[float], list[float]]:
    """The histogram (µs) regrouped into equal bins on a log scale of milliseconds: bin
    centres and the share of all samples in each."""
    width = 1.0 / per_decade
    counts: dict[int, int] = {}
    for middle, n in hist.buckets():
        ms = max(middle / 1000.0, 1e-3)
        index = math.floor(math.log10(ms) / width)
        counts[index] = counts.get(index, 0) + n
    if not counts:
        return [], []
    lo, hi = min(counts), max(counts)
    centers = [10 ** ((i + 0.5) * width) for i in range(lo, hi + 1)]
    shares = [counts.get(i, 0) / hist.count for i in range(lo, hi + 1)]
    return centers, shares


def plot(result: Mapping[str, Any], path: Path) -> None:
    """Latency histogram (log scale) and throughput over time, one series per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    systems: Mapping[str, Mapping[str, Any]] = result["systems"]
    params = result["params"]
    joins = params["mode"] == "joins"
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"roomcast": "tab:blue", "socketio": "tab:orange"}
    for name, entry in systems.items():
        color = colors.get(name)
        hist = Histogram.from_dict(entry.get("latency_histogram_us", {}))
        label_key = "latency_ms"
        if joins or hist.count == 0:
            hist = Histogram.from_dict(entry.get("join_histogram_us", {}))
            label_key = "join_ms"
        if hist.count:
            centers, shares = log_bins(hist)
            left.step(centers, shares, where="mid", color=color, label=name)
            p99 = entry[label_key]["p99"]
            if p99 is not None:
                left.axvline(p99, color=color, linestyle="--", linewidth=1)
        timeline = entry.get("timeline") or []
        bin_s = entry.get("timeline_bin_s", 0.25)
        if timeline:
            xs_t = [i * bin_s for i in range(len(timeline))]
            right.plot(xs_t, [n / bin_s for n in timeline], color=color, label=name)
    what = "join latency (userJoin to msgHistory)" if joins else "end-to-end latency"
    left.set_xscale("log")
    left.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    left.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    left.xaxis.set_minor_formatter(NullFormatter())
    left.set_xlabel(f"{what}, ms (dashed: p99)")
    left.set_ylabel("share of samples")
    left.set_title(f"{params['scenario']}: {what}")
    if left.get_legend_handles_labels()[0]:
        left.legend()
    right.set_xlabel("seconds since the start of the phase")
    right.set_ylabel("joins/s" if joins else "messages delivered/s")
    right.set_title("throughput over time")
    if right.get_legend_handles_labels()[0]:
        right.legend()
    right.set_ylim(bottom=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
