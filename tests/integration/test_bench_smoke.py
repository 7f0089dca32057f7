"""`roomcast bench` as a user runs it: a process that starts its own deployment on the machine's
RabbitMQ, drives it, and writes the JSON other tools read. Tiny sizes; no assertion on speed
(the machine is shared), only on the shape of the result and on what it leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from roomcast.bench.stats import SUMMARY_KEYS, SYSTEM_KEYS, schema_problems
from roomcast.bench.sweep import knee, next_rate, verdict

pytestmark = pytest.mark.integration


def _bench(
    tmp_path: Path, *args: str, timeout: float = 120, table: str = "delivered msgs/s"
) -> dict[str, Any]:
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "roomcast", "bench", *args, "--json", str(out), "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert table in proc.stdout  # the table
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _check_system(entry: dict[str, Any]) -> None:
    for key in SYSTEM_KEYS:
        assert key in entry, key
    for key in ("latency_ms", "join_ms"):
        assert set(SUMMARY_KEYS) <= set(entry[key])
    for key in ("delivered_per_s", "acks_per_s", "server_cpu_s", "server_rss_mb", "loadgen_cpu_s"):
        assert isinstance(entry[key], int | float) and entry[key] >= 0, key
    assert isinstance(entry["errors"], int)
    # every client joined and messages went through (a count, not a speed)
    assert entry["joins"] == 20
    assert entry["delivered"] > 0 and entry["acks"] > 0
    assert entry["latency_ms"]["p50"] is not None and entry["join_ms"]["p99"] is not None
    assert entry["server_rss_mb"] > 0 and entry["server_cpu_s"] > 0


def _leftover_exchanges() -> set[str]:
    """Exchanges named like the bench's on the machine's broker (rabbitmqctl, read only)."""
    try:
        proc = subprocess.run(
            ["rabbitmqctl", "list_exchanges", "name", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {line.strip() for line in proc.stdout.splitlines() if line.startswith("bench-")}


def _left_behind(result: dict[str, Any]) -> set[str]:
    """The run's own exchanges still on the broker (other people's benches may run meanwhile)."""
    run = result["run_id"]
    return _leftover_exchanges() & {f"bench-{run}", f"bench-peer-{run}"}


def test_fanout_writes_the_documented_json(tmp_path: Path) -> None:
    result = _bench(tmp_path, "fanout", "--clients", "20", "--duration", "2")
    assert schema_problems(result) == []
    assert list(result["systems"]) == ["roomcast"]
    _check_system(result["systems"]["roomcast"])
    assert result["scenario"] == "fanout" and result["params"]["clients"] == 20
    assert result["ratio"] is None
    assert _left_behind(result) == set()


def test_vs_socketio_runs_both_and_gives_ratios(tmp_path: Path) -> None:
    plot = tmp_path / "plot.png"
    result = _bench(
        tmp_path,
        "fanout",
        "--vs",
        "socketio",
        "--clients",
        "20",
        "--duration",
        "2",
        "--gateways",
        "1",
        "--plot",
        str(plot),
    )
    assert schema_problems(result) == []
    assert list(result["systems"]) == ["roomcast", "socketio"]
    for entry in result["systems"].values():
        _check_system(entry)
    ratio = result["ratio"]
    assert ratio["delivered_per_s"] == pytest.approx(
        result["systems"]["roomcast"]["delivered_per_s"]
        / result["systems"]["socketio"]["delivered_per_s"],
        rel=0.01,
    )
    assert ratio["latency_ms.p99"] == ratio["latency_ms"]["p99"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_steps_the_rate_and_reports_each_knee(tmp_path: Path) -> None:
    plot = tmp_path / "sweep.png"
    args = ["fanout", "--sweep", "--vs", "socketio", "--clients", "20", "--gateways", "1"]
    args += ["--duration", "2", "--rate", "10", "--steps", "2", "--plot", str(plot)]
    result = _bench(tmp_path, *args, timeout=400, table="knee")
    sweep = result["sweep"]
    assert sweep["limit_ms"] == 50.0 and sweep["start_rate"] == 10.0
    assert list(result["systems"]) == ["roomcast", "socketio"]
    for entry in result["systems"].values():
        steps = entry["steps"]
        assert 1 <= len(steps) <= 2
        for i, step in enumerate(steps):
            # each rate is the one the schedule picks after the steps before it
            assert step["rate"] == pytest.approx(next_rate(steps[:i], 10.0, 2), abs=0.01)
            # one room of 20 with 2 writers: each message goes to the 19 others
            assert step["offered_deliveries_per_s"] == pytest.approx(step["rate"] * 19)
            assert set(SUMMARY_KEYS) <= set(step["latency_ms"])
            assert (step["passed"], step["why"]) == verdict(step, 50.0)
            assert step["delivered_per_s"] >= 0 and isinstance(step["errors"], int)
        assert entry["knee"] == knee(steps)
        if entry["knee"] is not None:
            assert entry["knee"]["latency_ms"]["p99"] <= 50.0
    ours, theirs = (result["systems"][s]["knee"] for s in ("roomcast", "socketio"))
    if ours is not None and theirs is not None:
        assert result["ratio"]["knee_rate"] == pytest.approx(ours["rate"] / theirs["rate"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reconnect_storm_brings_every_user_back(tmp_path: Path) -> None:
    plot = tmp_path / "storm.png"
    args = ["reconnect-storm", "--clients", "30", "--rooms", "2", "--rate", "10"]
    args += ["--duration", "60", "--plot", str(plot)]
    result = _bench(tmp_path, *args, timeout=300, table="recovered")
    assert result["scenario"] == "reconnect-storm" and result["params"]["gateways"] == 3
    entry = result["systems"]["roomcast"]
    assert entry["clients"] == 30
    assert entry["recovered"] + len(entry["unrecovered"]) == 30
    assert entry["unrecovered"] == [], entry["unrecovered"]
    assert sum(entry["attempts"].values()) == 30
    times = entry["recovered_after_ms"]
    assert len(times) == entry["recovered"] and times == sorted(times)
    recovered, lost = entry["recovered_ms"], entry["lost_ms"]
    assert recovered["p50"] <= recovered["p99"] <= recovered["max"]
    assert recovered["max"] == pytest.approx(times[-1], rel=0.02)  # histogram: +-1.6 %
    assert lost["max"] <= recovered["max"]
    # the writers kept posting, and each message reached each recovered user once
    assert entry["messages_posted"] > 0
    assert entry["missing"] == 0 and entry["duplicates"] == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _left_behind(result) == set()
