"""What a chaos run shows: two tables (the faults, then the audit) and a plot of acks and
deliveries over time with each fault marked and its recovery shaded."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def fault_rows(result: Mapping[str, Any]) -> list[list[str]]:
    target = result["targets"]["recovered_s"]
    rows = []
    for f in result["faults"]:
        back = f.get("back_after_fault_s", f["recovered_s"])
        verdict = "never" if back is None else ("ok" if back <= target else f"> {target:g} s")
        rows.append(
            [
                f["kind"],
                f["target"],
                f"{f['at_s']:.1f}",
                _s(f["recovered_s"]),
                _s(f["writers_back_s"]),
                str(f["disconnects"]),
                verdict,
            ]
        )
    return rows


def audit_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    d = result["duplicates"]
    rows = [
        ("acked", f"{result['acked']:,}"),
        ("stored", f"{result['stored']:,}"),
        ("lost (acked, not stored)", f"{result['lost']:,}"),
        (
            "duplicated (stored twice / shown twice live / in history)",
            f"{result['duplicated']:,} ({d['stored_twice']} / {d['shown_twice_live']} / "
            f"{d['shown_twice_history']})",
        ),
        ("reader gaps (stored, never seen)", f"{result['gaps']:,}"),
    ]
    for name, reader in result["readers"].items():
        if reader["gaps"]:
            rows.append((f"  gaps of {name}", f"{reader['gaps']:,} {reader['by_room']}"))
    rows.append(("unacked at the end", f"{result['unacked_at_end']:,}"))
    rows.append(("stored but never acked", f"{result['stored_not_acked']:,}"))
    presence = result.get("presence")
    if presence is not None:
        rows.append(("user lists unlike the roster (2.1)", f"{presence['presence_mismatches']:,}"))
    return rows


def print_table(result: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    params = result["params"]
    console = Console() if Console().is_terminal else Console(width=120)
    console.print(
        f"roomcast bench chaos: {params['writers']} writers, {params['readers']} readers, "
        f"{params['rooms']} rooms, {params['gateways']} gateways, {params['rate']:g} msgs/s, "
        f"{params['duration']:g}s",
        highlight=False,
    )
    title = "faults"
    if params.get("down"):
        title += f" (each lasted {params['down']:g} s; the verdict is on chat back minus that)"
    faults = Table(title=title)
    for name in ("fault", "target", "at (s)", "chat back (s)", "writers back (s)", "drops", ""):
        faults.add_column(name, justify="left" if name in ("fault", "target") else "right")
    for row in fault_rows(result):
        faults.add_row(*row)
    console.print(faults)
    table = Table(title="audit")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for label, value in audit_rows(result):
        table.add_row(label, value)
    console.print(table)
    verdict = "[green]targets met[/green]" if result["ok"] else "[red]targets missed[/red]"
    console.print(verdict)
    for service, problems in (result.get("log_problems") or {}).items():
        loggers = ", ".join(f"{k} {v}" for k, v in problems["by_logger"].items())
        console.print(f"[dim]- {service}: error lines in its log: {loggers}[/dim]")
    if result.get("logs"):
        console.print(f"[dim]- logs kept in {result['logs']}[/dim]")


def plot(result: Mapping[str, Any], path: Path) -> None:
    """Acks and reader deliveries per second over the run; faults as lines, recovery shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = result["timeline"]
    bin_s = timeline["bin_s"]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for key, label, color in (
        ("deliveries", "delivered to readers / s", "tab:blue"),
        ("acks", "acked / s", "tab:green"),
    ):
        series = timeline[key]
        xs_s = [(i + 0.5) * bin_s for i in range(len(series))]
        ax.plot(xs_s, [n / bin_s for n in series], label=label, color=color)
    drops = timeline["disconnects"]
    xs = [(i + 0.5) * bin_s for i, n in enumerate(drops) if n]
    if xs:
        top = max(max(timeline["deliveries"] or [0]) / bin_s, 1.0)
        ax.scatter(xs, [top * 1.02] * len(xs), marker="v", color="tab:red", label="socket drops")
    for fault in result["faults"]:
        at = fault["at_s"]
        ax.axvline(at, color="tab:red", linestyle="--", linewidth=1)
        back = fault["recovered_s"]
        if back is not None:
            ax.axvspan(at, at + back, color="tab:red", alpha=0.12)
        label = fault["kind"] + ("" if back is None else f" ({back:.1f} s)")
        ax.annotate(
            label,
            (at, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
        )
    ax.set_xlabel("seconds since the writers started")
    ax.set_ylabel("messages / s")
    ax.set_title(
        f"chaos: acked {result['acked']:,}, lost {result['lost']}, "
        f"duplicated {result['duplicated']}, reader gaps {result['gaps']}"
    )
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
