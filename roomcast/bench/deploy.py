"""The systems under test, as processes on 127.0.0.1: start them, find their pids, measure
their CPU and memory, stop them, and remove what they declared on the broker.

- `RoomcastDeployment`: `roomcast history|presence|gateway` processes (G gateways) on the
  machine's RabbitMQ, an exchange and a database of the run's own, and the rate limit lifted
  (`BENCH_ENV`): the bench's writers would otherwise be refused at 10 messages per second.
- `PeerDeployment`: G processes of bench/peers/socketio_peer.py on the same broker.
- `TargetDeployment`: gateways that already run (`--target`); the bench finds the local
  processes that listen on their ports, when there are any, to measure them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

PEER_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "peers" / "socketio_peer.py"

# What the bench changes in roomcast's settings for the deployment it starts (shown in the
# report): the per-connection rate limit would refuse the bench's writers.
BENCH_ENV = {
    "ROOMCAST_RATE_PER_SECOND": "1000000",
    "ROOMCAST_RATE_BURST": "1000000",
    "ROOMCAST_MAX_CONNECTIONS_PER_IP": "0",  # every bench client comes from 127.0.0.1
    "ROOMCAST_LOG_LEVEL": "warning",
    "ROOMCAST_LOG_FORMAT": "console",
}


# Each service starts through this, so that it gets SIGTERM if the bench dies without cleaning
# up (Linux: PR_SET_PDEATHSIG, bound to the thread that starts it: the event loop's), then runs
# `python -m roomcast ...` or the peer script.
_BOOTSTRAP = """\
import ctypes, os, runpy, signal, sys
parent = int(sys.argv.pop(1))
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))
if os.getppid() != parent:
    sys.exit(1)
target = sys.argv.pop(1)
if target.endswith(".py"):
    sys.argv[0] = target
    runpy.run_path(target, run_name="__main__")
else:
    sys.argv[0] = target
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def command(target: str, *args: str) -> list[str]:
    """`python -m TARGET ARGS` (or `python TARGET.py ARGS`) that dies with the bench."""
    return [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), target, *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> str | None:
    """The body of `GET path` (HTTP/1.0, so the server closes when done), or None."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
                raw = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return None
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
        return None
    return body.decode("utf-8", errors="replace")


async def http_status(host: str, port: int, path: str, timeout: float = 2.0) -> int | None:
    """The status code of `GET path`, or None when nothing answers."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
                )
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 else None
    except (OSError, TimeoutError, ValueError):
        return None


@dataclass
class Service:
    role: str
    port: int
    args: list[str]
    env: dict[str, str]
    log: Path
    ready_path: str
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C of the bench reaches it through us only
            )

    async def ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.role} exited at start:\n{self.tail()}")
            if await http_status("127.0.0.1", self.port, self.ready_path) == 200:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.role} not ready after {timeout:g}s:\n{self.tail()}")
            await asyncio.sleep(0.1)

    async def stop(self, grace: float = 15.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.to_thread(process.wait)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


@dataclass
class Deployment:
    """A running system: WebSocket base URLs (`ws://host:port`) and pids by role."""

    system: str
    urls: list[str] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    extra_pids: dict[str, list[int]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def pids(self) -> dict[str, list[int]]:
        roles: dict[str, list[int]] = {k: list(v) for k, v in self.extra_pids.items()}
        for s in self.services:
            if s.pid is not None:
                roles.setdefault(s.role, []).append(s.pid)
        return roles

    async def start(self) -> None:
        for s in self.services:
            s.start()
        try:
            await asyncio.gather(*(s.ready() for s in self.services))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        # gateways first (they drain their sockets), then the services behind them
        fronts = [s for s in self.services if s.role in ("gateway", "peer")]
        backs = [s for s in self.services if s not in fronts]
        await asyncio.gather(*(s.stop() for s in fronts), return_exceptions=True)
        await asyncio.gather(*(s.stop() for s in backs), return_exceptions=True)
        await self.cleanup()

    async def cleanup(self) -> None:
        """Remove what the system declared on the broker."""

    def logs(self) -> str:
        return "\n".join(f"--- {s.role}:{s.port} ({s.log})\n{s.tail()}" for s in self.services)


# passed on from the bench's own environment: stage timestamps (roomcast.shared.bus.trace),
# reported per stage when set; the gateway's flush pacing (roomcast.gateway.flushing), to compare
PASSED_ON = ("ROOMCAST_TRACE_STAGES", "ROOMCAST_FLUSH_PACE_MS")


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_") or k in PASSED_ON}


class RoomcastDeployment(Deployment):
    def __init__(
        self, workdir: Path, amqp_url: str, mongo_url: str, gateways: int, run_id: str
    ) -> None:
        super().__init__("roomcast")
        self.amqp_url = amqp_url
        self.exchange = f"bench-{run_id}"
        self.db = f"bench_{run_id}"
        env = {
            **_base_env(),
            "ROOMCAST_AMQP_URL": amqp_url,
            "ROOMCAST_MONGO_URL": mongo_url,
            "ROOMCAST_MONGO_DB": self.db,
            "ROOMCAST_EXCHANGE": self.exchange,
            "ROOMCAST_SECRET": secrets.token_urlsafe(24),
            **BENCH_ENV,
        }
        self.settings = {
            "exchange": self.exchange,
            "mongo_db": self.db,
            **{k: v for k, v in BENCH_ENV.items() if "LOG" not in k},
        }
        kinds = ["history", "presence"] + ["gateway"] * gateways
        for kind in kinds:
            port = free_port()
            self.services.append(
                Service(
                    kind,
                    port,
                    command("roomcast", kind, "--port", str(port)),
                    env,
                    workdir / f"roomcast-{kind}-{port}.log",
                    "/readyz",
                )
            )
        self.urls = [f"ws://127.0.0.1:{s.port}" for s in self.services if s.role == "gateway"]

    async def start(self) -> None:
        # history and presence first: a gateway's first heartbeat goes to presence
        backs = [s for s in self.services if s.role != "gateway"]
        fronts = [s for s in self.services if s.role == "gateway"]
        try:
            for group in (backs, fronts):
                for s in group:
                    s.start()
                await asyncio.gather(*(s.ready() for s in group))
        except BaseException:
            await self.stop()
            raise

    async def cleanup(self) -> None:
        await delete_topology(
            self.amqp_url,
            self.exchange,
            queues=[f"{self.exchange}.history", f"{self.exchange}.presence"],
        )


class PeerDeployment(Deployment):
    def __init__(
        self,
        workdir: Path,
        amqp_url: str,
        mongo_url: str,
        gateways: int,
        run_id: str,
        *,
        deflate: bool = False,
    ) -> None:
        super().__init__("socketio")
        if not PEER_SCRIPT.exists():
            raise RuntimeError(f"the python-socketio peer is not at {PEER_SCRIPT}")
        self.amqp_url = amqp_url
        self.channel = f"bench-peer-{run_id}"
        db = f"peer_{run_id}"
        self.settings = {
            "exchange": self.channel,
            "mongo_db": db,
            "permessage_deflate": deflate,
            "server": "python-socketio AsyncServer + AsyncAioPikaManager on uvicorn",
        }
        for _ in range(gateways):
            port = free_port()
            args = [
                *command(str(PEER_SCRIPT)),
                "--port",
                str(port),
                "--amqp",
                amqp_url,
                "--channel",
                self.channel,
                "--mongo",
                mongo_url,
                "--db",
                db,
            ]
            if deflate:
                args.append("--deflate")
            self.services.append(
                Service("peer", port, args, _base_env(), workdir / f"peer-{port}.log", "/healthz")
            )
        self.urls = [f"ws://127.0.0.1:{s.port}" for s in self.services]

    async def cleanup(self) -> None:
        await delete_topology(self.amqp_url, self.channel, queues=[])


def listening_pids(port: int) -> list[int]:
    """Local processes that listen on a TCP port (needs the right to see them)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return []
    return sorted(
        {
            c.pid
            for c in conns
            if c.pid and c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
        }
    )


class TargetDeployment(Deployment):
    """Gateways that already run: `--target ws://host:port[,ws://host:port...]`."""

    def __init__(self, target: str) -> None:
        super().__init__("roomcast")
        for raw in target.split(","):
            raw = raw.strip()
            if not raw:
                continue
            parts = urlsplit(raw if "://" in raw else f"ws://{raw}")
            if parts.scheme not in ("ws", "http"):
                raise ValueError(f"--target: only ws:// or http:// URLs ({raw!r})")
            if parts.hostname is None or parts.port is None:
                raise ValueError(f"--target: {raw!r} needs a host and a port")
            self.urls.append(f"ws://{parts.hostname}:{parts.port}")
            if parts.hostname in ("127.0.0.1", "localhost", "::1"):
                pids = listening_pids(parts.port)
                if pids:
                    self.extra_pids.setdefault("gateway", []).extend(pids)
        if not self.urls:
            raise ValueError("--target: no URL")
        self.settings = {"target": self.urls, "note": "an existing deployment, its own settings"}

    async def start(self) -> None:
        for url in self.urls:
            parts = urlsplit(url)
            assert parts.hostname is not None and parts.port is not None
            if await http_status(parts.hostname, parts.port, "/healthz") != 200:
                raise RuntimeError(f"--target: {url} does not answer /healthz")

    async def stop(self) -> None:
        pass


async def delete_topology(amqp_url: str, exchange: str, queues: list[str]) -> None:
    """Delete the durable queues and the exchange a run declared (best effort)."""
    import aio_pika

    try:
        connection = await aio_pika.connect(amqp_url, timeout=10)
    except Exception:
        return
    async with connection:
        for name in queues:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(name)
        channel = await connection.channel()
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await channel.exchange_delete(exchange)


# measuring -------------------------------------------------------------------------------------
def broker_pids(port: int | None = None) -> list[int]:
    """The RabbitMQ node (Erlang's beam.smp) the bench talks to, read only: the one listening on
    `port` when that can be told, else every local node. Tests start private nodes on other
    ports, and one of them stopping mid-run must not count against the bench's broker."""
    nodes = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == "beam.smp" and "rabbit" in " ".join(proc.info["cmdline"] or []):
                nodes.append(proc)
    if port is not None:
        serving = [p.pid for p in nodes if _listens(p, port)]
        if serving:
            return serving
    return [p.pid for p in nodes]


def _listens(proc: psutil.Process, port: int) -> bool:
    try:
        conns = proc.net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two `Monitor.cpu` readings, by the processes present at both
    (one that ended meanwhile is left out instead of counting its whole past as negative)."""
    return sum(after[p] - before[p] for p in after if p in before and after[p] >= before[p])


class Monitor:
    """Samples the RSS of a system's processes in a thread (peaks, per process and summed)
    and reads their CPU time on demand. A role's processes include their children."""

    def __init__(self, roles: dict[str, list[int]], interval: float = 0.2) -> None:
        self.roles = roles
        self.interval = interval
        self._procs: dict[int, psutil.Process] = {}
        for pids in roles.values():
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    self._procs[pid] = psutil.Process(pid)
        self.peak: dict[int, int] = {}
        self.peak_total = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _tree(self, pid: int) -> list[psutil.Process]:
        proc = self._procs.get(pid)
        if proc is None:
            return []
        try:
            return [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return [proc]

    def rss(self) -> dict[int, int]:
        """Bytes resident now, per watched pid (its children included)."""
        out = {}
        for pid in self._procs:
            total = 0
            for proc in self._tree(pid):
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
            out[pid] = total
        return out

    def cpu(self) -> dict[int, float]:
        """CPU seconds (user + system) so far, per watched pid that still runs (children
        included)."""
        out = {}
        for pid in self._procs:
            if not self._procs[pid].is_running():
                continue
            total = 0.0
            for proc in self._tree(pid):
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
            out[pid] = total
        return out

    def sample(self) -> dict[int, int]:
        now = self.rss()
        for pid, value in now.items():
            if value > self.peak.get(pid, 0):
                self.peak[pid] = value
        self.peak_total = max(self.peak_total, sum(now.values()))
        return now

    def reset_peaks(self) -> None:
        self.peak = {}
        self.peak_total = 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.sample()

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def by_role(self, values: dict[int, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for role, pids in self.roles.items():
            out[role] = sum(values.get(pid, 0.0) for pid in pids)
        return out
