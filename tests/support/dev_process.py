"""`roomcast dev` as a real process, for the e2e and browser tests: started with
`python -m roomcast dev --port P --data-dir D`, ready once `/readyz` answers 200, stopped with
SIGINT like Ctrl-C in a terminal.

Each process gets a session (process group) of its own, so a test can signal the whole group as
a terminal does on Ctrl-C, and can check afterwards that nothing of the group (the SecantusDB
child above all) is still running, without psutil: `/proc` is read directly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

READY_TIMEOUT = 60.0  # starts a SecantusDB child first
STOP_TIMEOUT = 20.0


def dev_env(**extra: str) -> dict[str, str]:
    """This environment without any ROOMCAST_* of the caller's, console logs, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    env["ROOMCAST_LOG_FORMAT"] = "console"
    env.update(extra)
    return env


def dev_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "roomcast", "dev", *args]


class DevProcess:
    """One `roomcast dev` process; its output (stdout and stderr) goes to `log`."""

    def __init__(self, data_dir: Path, port: int, log: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.env: dict[str, str] = {}  # ROOMCAST_* settings for the next start

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        assert not self.running, "already running"
        self.starts += 1
        args = dev_command("--port", str(self.port), "--data-dir", str(self.data_dir))
        with self.log.open("ab") as out:
            out.write(f"---- start #{self.starts}: {' '.join(args)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                args,
                env=dev_env(**self.env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: see `interrupt` and `leftovers`
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until /readyz answers 200; fail with the log's tail if the process exits."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as http:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"roomcast dev exited with {self.process.returncode}:\n{self.tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{self.http}/readyz").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"not ready within {timeout:g}s:\n{self.tail()}")
                time.sleep(0.1)

    def interrupt(self, *, group: bool) -> None:
        """SIGINT: to the whole process group (what Ctrl-C in a terminal does), or to the
        process alone (`kill -INT PID`)."""
        if group:
            os.killpg(self.pid, signal.SIGINT)
        else:
            os.kill(self.pid, signal.SIGINT)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"roomcast dev still running {timeout:g}s after SIGINT:\n{self.tail()}"
            ) from None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Ctrl-C: SIGINT to the process group, then wait for the process to exit."""
        assert self.process is not None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.interrupt(group=True)
        try:
            return self.wait(timeout)
        finally:
            self.kill()  # a child that outlived its parent (it should not)

    def kill(self) -> None:
        """Leave nothing behind: SIGKILL whatever of the process group still runs."""
        if self.process is None:
            return
        if self.process.poll() is None or live_pids(pgid=self.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def leftovers(self) -> list[str]:
        """Processes still running from this process's group or naming its data dir."""
        pids = live_pids(pgid=self.pid) | live_pids(cmdline_contains=str(self.data_dir))
        return [f"{pid}: {cmdline(pid)}" for pid in sorted(pids)]

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a process, from /proc/PID/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], int(fields[2])


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def live_pids(*, pgid: int | None = None, cmdline_contains: str | None = None) -> set[int]:
    """Running (not zombie) processes of a process group, or whose command line holds a text."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        in_group = pgid is not None and stat[1] == pgid
        if in_group or (cmdline_contains is not None and cmdline_contains in cmdline(pid)):
            found.add(pid)
    return found
