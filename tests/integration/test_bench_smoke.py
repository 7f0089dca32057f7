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

pytestmark = pytest.mark.integration


def _bench(tmp_path: Path, *args: str, timeout: float = 120) -> dict[str, Any]:
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
    assert "delivered msgs/s" in proc.stdout  # the table
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


def test_fanout_writes_the_documented_json(tmp_path: Path) -> None:
    before = _leftover_exchanges()
    result = _bench(tmp_path, "fanout", "--clients", "20", "--duration", "2")
    assert schema_problems(result) == []
    assert list(result["systems"]) == ["roomcast"]
    _check_system(result["systems"]["roomcast"])
    assert result["scenario"] == "fanout" and result["params"]["clients"] == 20
    assert result["ratio"] is None
    assert _leftover_exchanges() <= before


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
