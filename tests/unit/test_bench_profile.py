"""`roomcast bench --profile DIR` (roomcast/bench/profiling.py): py-spy on each server process for
the measured phase, one folded file per process and a summary ranking frames per role."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from roomcast.bench.profiling import PhaseProfiler, fold, summarize

pytestmark = pytest.mark.unit

BUSY = """
def spin():
    while True:
        sum(i * i for i in range(1000))
spin()
"""


def test_fold_ranks_self_and_inclusive_frames_and_leaves_out_shared_ones() -> None:
    lines = [
        "<module> (/x/roomcast/__main__.py:3);run (/x/runtime.py:9);a (/x/mod.py:1) 3",
        "<module> (/x/roomcast/__main__.py:3);run (/x/runtime.py:9);a (/x/mod.py:2);b (/x/m.py:5) 1",
        "garbage line",
    ]
    total, own, inclusive = fold(lines)
    assert total == 4
    assert own == {"a (/x/mod.py)": 3, "b (/x/m.py)": 1}  # lines apart, one function one row
    assert inclusive["a (/x/mod.py)"] == 4 and inclusive["b (/x/m.py)"] == 1
    assert not any("runtime.py" in frame or "<module>" in frame for frame in inclusive)


def test_summarize_says_so_when_a_role_has_no_samples(tmp_path: Path) -> None:
    empty = tmp_path / "x-gateway-1.txt"
    empty.write_text("")
    assert "== gateway: 0 samples" in summarize({"gateway": [empty]})


def test_a_running_process_is_profiled_until_stopped(tmp_path: Path) -> None:
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        profiler = PhaseProfiler(tmp_path, "roomcast", {"gateway": [busy.pid], "db": [1]})
        profiler.start()
        time.sleep(1.5)
        summary = profiler.stop()
    finally:
        busy.kill()
        busy.wait()
    text = summary.read_text()
    assert summary.name == "roomcast-summary.txt"
    assert "== gateway:" in text and "db" not in text  # the database is not ours to profile
    assert "spin (<string>)" in text or "<genexpr> (<string>)" in text, text
    assert (tmp_path / f"roomcast-gateway-{busy.pid}.txt").stat().st_size > 0


def test_without_py_spy_the_bench_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from roomcast.bench import profiling
    from roomcast.bench.runner import BenchError, Options, run

    monkeypatch.setattr(profiling.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(BenchError, match="--profile needs py-spy"):
        run(Options(scenario="join-storm", profile=Path("unused"), quiet=True))
