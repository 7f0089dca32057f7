"""What `reconnect-storm` reports: time from the kill to each user lost, reconnected and
recovered (p50/p90/p99/max), who never recovered and why, what recovered users missed or got
twice; a table, and a plot of users recovered over time (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .reconnectclient import StormClient
from .stats import Histogram, add_counts, summary_ms


def _since(times: Sequence[float | None], t0: float) -> Histogram:
    hist = Histogram()
    for t in times:
        if t is not None:
            hist.record(max(0, int((t - t0) * 1e6)))
    return hist


def summarize(
    users: Sequence[StormClient], writers: Sequence[StormClient], t_ready: float, t_kill: float
) -> dict[str, Any]:
    """The run's entry: counts, latencies from the kill, and each recovered user's view checked
    against what the writers of its room had acknowledged since everyone joined."""
    recovered = [u for u in users if u.recovered_at is not None]
    posted = {w.room: {i for i, at in w.acked if at >= t_ready} for w in writers}
    missing = {u.username: len(posted.get(u.room, set()) - u.seen) for u in recovered}
    attempts: dict[str, int] = {}
    for u in users:
        attempts[str(u.attempts)] = attempts.get(str(u.attempts), 0) + 1
    return {
        "clients": len(users),
        "recovered": len(recovered),
        "unrecovered": [
            {"username": u.username, "room": u.room, "why": u.failure or "unknown"}
            for u in users
            if u.recovered_at is None
        ],
        "recovered_ms": summary_ms(_since([u.recovered_at for u in users], t_kill)),
        "lost_ms": summary_ms(_since([u.lost_at for u in users], t_kill)),
        "reconnected_ms": summary_ms(_since([u.opened_at for u in recovered], t_kill)),
        "recovered_after_ms": sorted(
            round((u.recovered_at - t_kill) * 1000, 1) for u in recovered if u.recovered_at
        ),
        "attempts": dict(sorted(attempts.items(), key=lambda kv: int(kv[0]))),
        "connections": sum(u.connections for u in users),
        "errors_by_kind": add_counts(c.errors for c in [*users, *writers]),
        "messages_posted": sum(len(ids) for ids in posted.values()),
        "missing": sum(missing.values()),
        "users_missing": sum(1 for n in missing.values() if n),
        "duplicates": sum(u.duplicates for u in recovered),
    }


def _ms(block: Mapping[str, Any], key: str) -> str:
    value = block.get(key)
    return "-" if value is None else f"{value:,.1f}"


def print_table(result: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=120)
    params = result["params"]
    entry = result["systems"]["roomcast"]
    console.print(
        f"roomcast bench reconnect-storm: {params['clients']} users on the killed gateway, "
        f"{params['gateways']} gateways, {params['rooms']} rooms, writers {params['rate']:g} msg/s",
        highlight=False,
    )
    table = Table()
    table.add_column("from the kill to", justify="left")
    for q in ("p50", "p90", "p99", "max"):
        table.add_column(f"{q} (ms)", justify="right")
    for label, key in (
        ("socket lost", "lost_ms"),
        ("reconnected", "reconnected_ms"),
        ("recovered", "recovered_ms"),
    ):
        table.add_row(label, *(_ms(entry[key], q) for q in ("p50", "p90", "p99", "max")))
    console.print(table)
    console.print(
        f"recovered {entry['recovered']:,} of {entry['clients']:,}; "
        f"messages posted meanwhile {entry['messages_posted']:,}, missing {entry['missing']:,} "
        f"(at {entry['users_missing']} users), duplicates {entry['duplicates']:,}; "
        f"users by joins tried {entry['attempts']}, sockets opened {entry['connections']:,}",
        highlight=False,
    )
    for gone in entry["unrecovered"][:20]:
        console.print(f"never recovered: {gone['username']} ({gone['why']})", highlight=False)
    if len(entry["unrecovered"]) > 20:
        console.print(f"... and {len(entry['unrecovered']) - 20} more", highlight=False)
    if entry.get("presence_ops"):
        ops = ", ".join(f"{k}: {v:,.0f}" for k, v in sorted(entry["presence_ops"].items()))
        console.print(f"presence requests handled during the storm: {ops}", highlight=False)
    if entry["errors_by_kind"]:
        console.print(f"errors: {entry['errors_by_kind']}", highlight=False)
    for note in result.get("notes", []):
        console.print(f"[dim]- {note}[/dim]")


def plot(result: Mapping[str, Any], path: Path) -> None:
    """Users recovered against seconds since the kill (p50/p99 dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entry = result["systems"]["roomcast"]
    times = [t / 1000 for t in entry["recovered_after_ms"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.step([0.0, *times], range(len(times) + 1), where="post", color="tab:blue")
    ax.axhline(entry["clients"], color="grey", linestyle="--", linewidth=1, label="all users")
    for q in ("p50", "p99"):
        value = entry["recovered_ms"][q]
        if value is not None:
            ax.axvline(value / 1000, linestyle=":", color="tab:blue", linewidth=1)
            ax.annotate(q, (value / 1000, 0), textcoords="offset points", xytext=(3, 5))
    ax.set_xlabel("seconds since the gateway was killed")
    ax.set_ylabel("users recovered (joined, since)")
    ax.set_title(f"reconnect-storm: {entry['recovered']} of {entry['clients']} recovered")
    ax.legend(loc="upper left")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
