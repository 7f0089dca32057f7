"""A private RabbitMQ node beside the machine's, for what must restart a broker: the fault tests
and `roomcast bench chaos`.

`PrivateRabbitNode` is a throw-away node of its own (own node name, ports, data and log dirs).
Debian's `rabbitmq-server` drops to the `rabbitmq` user, so its directory belongs to that user.
It also gets its own config file: the machine's /etc/rabbitmq/rabbitmq.conf may pin
`listeners.tcp.*` to 5672, which would win over RABBITMQ_NODE_PORT and make the private node fail
on "eaddrinuse". It never touches the machine's node: every `rabbitmqctl` call names its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{name} not found: run scripts/ensure-rabbitmq.sh first")
    return path


class PrivateRabbitNode:
    """A RabbitMQ node beside the machine's, started and always cleaned up by its owner
    (a test, or the chaos bench).

    Usable as a sync or async context manager; the async form runs the slow, blocking
    start-up and shutdown in a worker thread so the event loop stays free.
    """

    def __init__(self, name: str | None = None, *, start_timeout: float = 60.0) -> None:
        self.nodename = f"{name or 'roomcast-test-' + uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self._start_timeout = start_timeout
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if os.geteuid() not in (0, pwd.getpwnam("rabbitmq").pw_uid):
            raise RuntimeError("a private RabbitMQ node must be started by root or rabbitmq")
        base = Path(tempfile.mkdtemp(prefix="roomcast-rabbit-"))
        self._dir = base
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        rabbitmq = pwd.getpwnam("rabbitmq")
        for path in (base, base / "enabled_plugins", base / "rabbitmq.conf"):
            os.chown(path, rabbitmq.pw_uid, rabbitmq.pw_gid)
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        }
        with open(base / "server.out", "wb") as out:
            # Its own session, so that stop() can end this node's process group and nothing else.
            self._process = subprocess.Popen(
                [_tool("rabbitmq-server")],
                env=env,
                cwd=base,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self._wait_until_answering(self._start_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not port_answers(self.port, timeout=0.5):
            process = self._process
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{self.nodename} exited at start-up:\n{self._output_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.nodename} did not answer on port {self.port} within {timeout:g}s:\n"
                    f"{self._output_tail()}"
                )
            time.sleep(0.2)

    def _output_tail(self, lines: int = 30) -> str:
        if self._dir is None:
            return ""
        with contextlib.suppress(OSError):
            return "\n".join((self._dir / "server.out").read_text().splitlines()[-lines:])
        return ""

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run `rabbitmqctl -n NODE args...` against this node only."""
        result = subprocess.run(
            [_tool("rabbitmqctl"), "-n", self.nodename, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def stop_app(self) -> None:
        """Stop the broker application: every client connection is dropped, nothing answers."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self._wait_until_answering(self._start_timeout)

    def restart(self) -> None:
        """Stop and start the broker application; the Erlang VM keeps running, so this takes
        about a second, not a full boot. Durable queues and persistent messages survive."""
        self.stop_app()
        self.start_app()

    def stop(self) -> None:
        """Shut the node down and delete its files; safe to call more than once."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self.ctl("shutdown", timeout=60)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._kill(process)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _kill(self, process: subprocess.Popen[bytes]) -> None:
        """Last resort when `shutdown` did not work. `su` puts the Erlang VM in a process group
        of its own, so it is killed by the pid it wrote, and the launcher by its group."""
        assert self._dir is not None
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((self._dir / "rabbitmq.pid").read_text().strip()), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def __enter__(self) -> PrivateRabbitNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> PrivateRabbitNode:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    async def arestart(self) -> None:
        await asyncio.to_thread(self.restart)
