"""`roomcast bench ... --profile DIR`: py-spy on every server process for the measured phase only.

Why: a profile of a whole run mixes the set-up (thousands of handshakes), the phase and the
tear-down (thousands of closes), and the join storm's phase is 3-5 s of a 30 s run. Here each
server process (gateways, history, presence; the peer's processes too) is sampled from the
phase's start to its end, one raw ("folded") file per process, `SYSTEM-ROLE-PID.txt`, and
`SYSTEM-summary.txt` ranks the frames per role: self time and inclusive, in % of the samples
(idle time is not sampled, so the shares are of busy time). docs/performance.md puts these
beside its figures.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

RATE = 200  # samples per second per process
TOP = 40  # frames per list in the summary
# frames every sample of a service shares (start-up, the CLI, the loop's run): noise in a ranking
_SHARED = re.compile(
    r"<module>|runpy|click/|roomcast/cli\.py|runtime\.py|uvloop/__init__|runners\.py"
)
_ROOT = str(Path(__file__).resolve().parents[2]) + "/"
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*)\)$")


class PyspyMissingError(RuntimeError):
    """--profile was asked for, and py-spy is not installed."""


def pyspy() -> str:
    # installed beside this Python (a venv not on PATH), or on PATH
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        raise PyspyMissingError(
            "--profile needs py-spy (pip install py-spy; it is in the `bench` extra)"
        )
    return found


class PhaseProfiler:
    """One `py-spy record` per process while the phase runs; stopped with SIGINT, so that each
    writes its file."""

    def __init__(self, directory: Path, system: str, roles: Mapping[str, Iterable[int]]) -> None:
        self.directory = directory
        self.system = system
        self.roles = {role: list(pids) for role, pids in roles.items() if role != "db"}
        self._running: list[tuple[str, Path, subprocess.Popen[bytes]]] = []

    def start(self) -> None:
        exe = pyspy()
        self.directory.mkdir(parents=True, exist_ok=True)
        for role, pids in self.roles.items():
            for pid in pids:
                out = self.directory / f"{self.system}-{role}-{pid}.txt"
                command = [exe, "record", "--format", "raw", "--rate", str(RATE)]
                command += ["--nonblocking", "--output", str(out), "--pid", str(pid)]
                with out.with_suffix(".log").open("wb") as log:  # py-spy's complaints, if any
                    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
                self._running.append((role, out, process))

    def stop(self) -> Path:
        """Stop every recorder, and write the summary; returns its path."""
        for _, _, process in self._running:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for _, _, process in self._running:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        by_role: dict[str, list[Path]] = collections.defaultdict(list)
        missing: list[str] = []
        for role, out, _ in self._running:
            if out.exists():
                by_role[role].append(out)
            else:
                missing.append(f"no profile of {out.stem}: see {out.with_suffix('.log').name}")
        self._running.clear()
        summary = self.directory / f"{self.system}-summary.txt"
        summary.write_text("".join(m + "\n" for m in missing) + summarize(by_role), "utf-8")
        return summary


def fold(lines: Iterable[str]) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Samples, self counts and inclusive counts by frame, from py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(frame) for frame in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            if not _SHARED.search(frame):
                inclusive[frame] += n
    return total, own, inclusive


def summarize(by_role: Mapping[str, Iterable[Path]]) -> str:
    parts: list[str] = []
    for role in sorted(by_role):
        lines: list[str] = []
        for path in by_role[role]:
            lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
        total, own, inclusive = fold(lines)
        parts.append(f"== {role}: {total} samples at {RATE}/s per process")
        if not total:
            continue
        parts.append("-- self")
        parts += [f"{100 * n / total:5.1f}% {frame}" for frame, n in own.most_common(TOP)]
        parts.append("-- inclusive")
        parts += [f"{100 * n / total:5.1f}% {frame}" for frame, n in inclusive.most_common(TOP)]
        parts.append("")
    return "\n".join(parts) + "\n"


def _short(frame: str) -> str:
    """`func (path:line)` as `func (package/module.py)`: lines apart, one function is one row."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"].rsplit(":", 1)[0].removeprefix(_ROOT)
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python3." in path:  # the standard library: asyncio/streams.py
        path = path.split("/lib/python3.", 1)[1].split("/", 1)[-1]
    return f"{match['name']} ({path})"
