"""`SecantusServer`: SecantusDB as a child process, for `roomcast dev` and the tests.

SecantusDB speaks MongoDB's wire protocol over WiredTiger on disk, so the one MongoDB store runs
everywhere. The child runs `python -m secantus --host HOST --port PORT --storage-path DIR`
with this interpreter; its output goes to `DIR/secantus.log`, never to the parent's terminal.

- `start()` picks a free port when `port=0`, and waits (bounded) until the port answers and a
  MongoDB `ping` succeeds. A child that cannot take the data dir's WiredTiger lock because an
  earlier server on it is still exiting is started again until the lock is free (bounded too).
- `stop()` sends SIGTERM, waits, then SIGKILL, and always waits for the exit, so that the
  WiredTiger lock is free for the next process when it returns.
- The child does not outlive the parent: on Linux it asks the kernel for SIGTERM when the
  parent goes (`prctl(PR_SET_PDEATHSIG)`; strictly, when the thread that started it ends, so
  start it from a thread that lives as long as the server should, such as the event loop's);
  elsewhere a watchdog thread in the child polls its parent id.

The process is a plain `subprocess.Popen` and is watched by polling, so one server can be
started on one event loop and stopped on another (a session-wide test server, for instance).

SecantusDB is the `dev` extra (GPL-2.0), not a dependency of the services: nothing on the path of
`roomcast gateway|history|presence` imports this module, and `installed()` lets `roomcast dev`
say how to get it instead of failing in the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog

from .store.mongo import server_pid

log = structlog.get_logger(__name__)

LOG_NAME = "secantus.log"
CONFIG_NAME = "secantusd.toml"
_POLL = 0.05
_LOG_TAIL_BYTES = 4000
# What the child prints when the data dir is locked by another process (WiredTiger's words).
_LOCK_HELD = "already being managed by another process"
_ADDRESS_IN_USE = "Address already in use"

# The child's entry point: ask to die with the parent, then be `python -m secantus`. Run in the
# child itself (not as a `preexec_fn`, which is unsafe in a parent that has threads).
_BOOTSTRAP = """\
import os, runpy, signal, sys, threading, time
parent = int(sys.argv.pop(1))
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
else:
    def _watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch, name="parent-watch", daemon=True).start()
if os.getppid() != parent:  # the parent died before the request took effect
    sys.exit(1)
sys.argv[0] = "secantus"
runpy.run_module("secantus", run_name="__main__", alter_sys=True)
"""


INSTALL_HINT = "pip install 'roomcast[dev]'"


def installed() -> bool:
    """Whether this interpreter can run `python -m secantus` (the `dev` extra is installed)."""
    return importlib.util.find_spec("secantus") is not None


class SecantusError(Exception):
    """The SecantusDB child process did not start, or did not stop."""


class SecantusServer:
    """One SecantusDB server process on `host:port` with its data in `data_dir`.

    ```
    async with SecantusServer(tmp_path) as server:
        client = AsyncMongoClient(server.url)
    ```
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        start_timeout: float = 30.0,
        stop_timeout: float = 15.0,
        python: str = sys.executable,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """`port=0` picks a free port at every start. `start_timeout` bounds `start()` (lock
        waits included); `stop_timeout` is how long `stop()` waits after SIGTERM before SIGKILL.
        `python` must have the `secantusdb` package; `extra_args` go to `python -m secantus`."""
        self.data_dir = Path(data_dir).resolve()  # the child runs in it: relative paths would break
        self.host = host
        self.requested_port = port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.python = python
        self.extra_args = extra_args
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"SecantusServer({str(self.data_dir)!r}, {state}, port={self._port})"

    @property
    def log_path(self) -> Path:
        """Where the child's stdout and stderr go (appended across starts)."""
        return self.data_dir / LOG_NAME

    @property
    def port(self) -> int:
        """The port of the running (or last started) server."""
        if self._port is None:
            raise SecantusError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """`mongodb://HOST:PORT` of the running (or last started) server."""
        return f"mongodb://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """Whether the child process exists and has not exited."""
        return self._process is not None and self._process.poll() is None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the server and wait until it answers a MongoDB `ping`.

        Raises `SecantusError` (with the tail of the log) when the child exits or does not
        answer within `start_timeout`; the child is then stopped.
        """
        if self.running:
            raise SecantusError(f"already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # An empty config file: `--config` turns off the discovery of ./secantusd.toml,
        # ~/.secantus/ and /etc/secantus/, so nothing outside the data dir changes the server.
        config = self.data_dir / CONFIG_NAME
        if not config.exists():
            config.write_text("# Written by roomcast: the flags on the command line rule.\n")
        deadline = time.monotonic() + self.start_timeout
        locked_output = ""  # what the last child that found the data dir locked printed
        while True:
            port = self.requested_port or _free_port(self.host)
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn(port, config)
            try:
                await self._wait_ready(port, deadline)
            except _ChildExitedError as exc:
                output = _read_from(self.log_path, offset)
                lock_held = _LOCK_HELD in output
                port_taken = _ADDRESS_IN_USE in output and not self.requested_port
                if (lock_held or port_taken) and time.monotonic() < deadline:
                    if lock_held:
                        if not locked_output:
                            log.info(
                                "secantus data dir is locked, waiting", data_dir=str(self.data_dir)
                            )
                        locked_output = output
                    await asyncio.sleep(0.2 if lock_held else 0)
                    continue
                if lock_held:
                    raise self._locked_error(output) from None
                raise SecantusError(
                    f"SecantusDB exited with code {exc.returncode} while starting"
                    f" (see {self.log_path}):\n{_tail(output)}"
                ) from None
            except TimeoutError:
                await self._terminate()
                if locked_output:  # the lock was freed too late, if at all
                    raise self._locked_error(locked_output) from None
                output = _read_from(self.log_path, offset)
                raise SecantusError(
                    f"SecantusDB did not answer on {self.host}:{port} within"
                    f" {self.start_timeout:g}s (see {self.log_path}):\n{_tail(output)}"
                ) from None
            except BaseException:  # cancelled: leave no child behind
                await self._terminate()
                raise
            log.info("secantus started", pid=self.pid, port=port, data_dir=str(self.data_dir))
            return

    def _locked_error(self, output: str) -> SecantusError:
        return SecantusError(
            f"SecantusDB could not start within {self.start_timeout:g}s: its data dir"
            f" {self.data_dir} is locked by another process (see {self.log_path}):\n{_tail(output)}"
        )

    async def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `stop_timeout`) and wait for its exit;
        idempotent."""
        if self._process is None:
            return
        pid = self.pid
        code = await self._terminate()
        log.info("secantus stopped", pid=pid, returncode=code)

    async def restart(self) -> None:
        """Stop, then start again on the same data dir (and the same port unless `port=0`)."""
        await self.stop()
        await self.start()

    def _spawn(self, port: int, config: Path) -> None:
        self._port = port
        args = [
            self.python,
            "-c",
            _BOOTSTRAP,
            str(os.getpid()),
            "--config",
            str(config),
            "--host",
            self.host,
            "--port",
            str(port),
            "--storage-path",
            str(self.data_dir),
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as output:  # the child keeps its own descriptor
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                close_fds=True,
                # Its own session: a Ctrl-C at the terminal goes to roomcast alone, which
                # drains its gateway and only then stops the database.
                start_new_session=True,
            )

    async def _wait_ready(self, port: int, deadline: float) -> None:
        """Wait until the port accepts connections and our child answers a MongoDB `ping`.

        Raises `_ChildExitedError` when the child exits, `TimeoutError` at the deadline.
        """
        while not await self._port_answers(port):
            self._check_alive()
            if time.monotonic() >= deadline:
                raise TimeoutError
            await asyncio.sleep(_POLL)
        url = f"mongodb://{self.host}:{port}"
        assert self._process is not None
        child = self._process.pid
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            # The pid tells our child from another server that took the port first (ours then
            # fails to bind, exits, and start() tries another port).
            if await server_pid(url, min(remaining, 5.0)) == child:
                return
            await asyncio.sleep(_POLL)

    async def _port_answers(self, port: int) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, port), 1.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def _check_alive(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is not None:
            self._process = None
            raise _ChildExitedError(code)

    async def _terminate(self) -> int | None:
        """SIGTERM, wait up to `stop_timeout`, SIGKILL, wait; returns the exit code (None if
        there was no child)."""
        process, self._process = self._process, None
        if process is None:
            return None
        try:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(self.stop_timeout):
                        return await _wait_exit(process)
                except TimeoutError:
                    log.warning("secantus ignored SIGTERM, killing it", pid=process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            return await _wait_exit(process)
        except BaseException:
            # Cancelled (or worse) mid-stop: do not leave the child behind.
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()
            raise


class _ChildExitedError(Exception):
    def __init__(self, returncode: int) -> None:
        super().__init__(returncode)
        self.returncode = returncode


async def _wait_exit(process: subprocess.Popen[bytes]) -> int:
    """Poll until the process exits (reaping it); returns its exit code.

    Polling, rather than an asyncio child watcher, keeps the process free of any event loop.
    """
    while (code := process.poll()) is None:  # noqa: ASYNC110 - nothing to wait on but the pid
        await asyncio.sleep(_POLL)
    return code


def _free_port(host: str) -> int:
    """A port nobody listens on now (the child may still lose it to a race: start retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _read_from(path: Path, offset: int) -> str:
    """The log from `offset` on: what the latest child wrote."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _tail(text: str) -> str:
    text = text.strip()
    if not text:
        return "(no output)"
    return text[-_LOG_TAIL_BYTES:]
