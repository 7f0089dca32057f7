"""One `roomcast bench` run: deploy each system, drive it with the load-generator processes,
measure the servers, and report.

With `--vs socketio` both systems run the same scenario, one after the other (in alternating
order when there are several rounds), each on a fresh deployment, with the same database server
and the same broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import platform
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from . import report, worker
from .deploy import (
    Deployment,
    Monitor,
    PeerDeployment,
    RoomcastDeployment,
    TargetDeployment,
    broker_pids,
    cpu_delta,
    http_get,
)
from .profiling import PhaseProfiler, PyspyMissingError, pyspy
from .scenarios import Config, Plan, build_plan, resolve
from .stats import (
    bucket_percentiles_ms,
    comparison,
    stage_percentiles_ms,
    summarize_system,
    summed,
)

DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
SETTLE_QUIET = 1.5  # seconds without any frame before the measured phase starts
SETTLE_LIMIT = 60.0
FANOUT_METRIC = "roomcast_gateway_fanout_seconds"
MB = 1024 * 1024
T = TypeVar("T")


@dataclass
class Options:
    scenario: str
    vs: str | None = None
    duration: float | None = None
    clients: int | None = None
    gateways: int | None = None
    rooms: int | None = None
    rate: float | None = None
    json_path: Path | None = None
    plot_path: Path | None = None
    target: str | None = None
    senders: int | None = None
    workers: int = 2
    rounds: int = 1
    peer_deflate: bool = False
    batch: bool = True
    quiet: bool = False
    faults: str | None = None  # chaos: which faults, comma-separated (default: all)
    down: float = 0.0  # chaos: seconds each fault lasts before the restart
    sweep: bool = False  # step the rate until p99 passes `limit` (sweep.py)
    limit: float = 50.0  # --sweep: the p99 limit, ms
    steps: int = 8  # --sweep: measurements per system, at most
    profile: Path | None = None  # py-spy on every server process for the phase (profiling.py)


class BenchError(Exception):
    """A run that could not be completed (the message says why)."""


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in (
        "roomcast",
        "hypercorn",
        "quart",
        "aio-pika",
        "python-socketio",
        "python-engineio",
        "uvicorn",
        "websockets",
        "uvloop",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    import psutil

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


class Progress:
    """A progress bar on stderr while it runs (plain lines when stderr is not a terminal)."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.live = not quiet and self.console.is_terminal
        self.quiet = quiet
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]{task.fields[phase]}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[detail]}"),
                console=self.console,
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def phase(self, name: str, total: float) -> None:
        if self._progress is not None:
            if self._task is not None:
                self._progress.update(self._task, completed=self._progress.tasks[-1].total)
            self._task = self._progress.add_task("", total=total, phase=name, detail="")
        elif not self.quiet:
            self.console.print(f"roomcast bench: {name}", highlight=False)

    def update(self, completed: float, detail: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=completed, detail=detail)

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)


class WorkerPool:
    """The load-generator processes of one measurement and their pipes."""

    def __init__(self, plans: list[worker.WorkerPlan]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []
        for plan in plans:
            parent, child = ctx.Pipe(duplex=True)
            process = ctx.Process(
                target=worker.main, args=(child, plan), name=f"bench-worker-{plan.worker}"
            )
            process.daemon = True
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)
            threading.Thread(
                target=self._read, args=(plan.worker, parent), daemon=True, name="bench-pipe"
            ).start()

    def _read(self, index: int, pipe: Connection) -> None:
        while True:
            try:
                message = pipe.recv()
            except (EOFError, OSError):
                with contextlib.suppress(RuntimeError):
                    self.loop.call_soon_threadsafe(self.inbox.put_nowait, ("eof", index))
                return
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.inbox.put_nowait, message)

    def send(self, *message: Any) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send(message)

    async def close(self) -> None:
        self.send("close")
        deadline = time.monotonic() + 15
        for process in self.processes:
            while process.is_alive() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            if process.is_alive():
                process.terminate()
                await asyncio.to_thread(process.join, 5)
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.close()


class Bench:
    def __init__(self, options: Options, config: Config) -> None:
        self.options = options
        self.config = config
        self.run_id = secrets.token_hex(3)
        self.amqp_url = os.environ.get("ROOMCAST_AMQP_URL", DEFAULT_AMQP)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"roomcast-bench-{self.run_id}-"))
        self.db: Any = None
        self.progress = Progress(options.quiet)

    # one system ---------------------------------------------------------------------------------
    def _deployment(self, system: str) -> Deployment:
        gateways = self.config.gateways
        if system == "roomcast":
            if self.options.target:
                return TargetDeployment(self.options.target)
            return RoomcastDeployment(
                self.workdir, self.amqp_url, self.db.url, gateways, self.run_id
            )
        return PeerDeployment(
            self.workdir,
            self.amqp_url,
            self.db.url,
            gateways,
            self.run_id,
            deflate=self.options.peer_deflate,
        )

    def _plans(self, system: str, plan: Plan) -> list[worker.WorkerPlan]:
        cfg = self.config
        interval = None
        if cfg.mode == "chat" and cfg.rate > 0:
            interval = cfg.senders / cfg.rate
        join_interval = None
        if cfg.mode == "joins" and cfg.rate > 0:
            join_interval = cfg.workers / cfg.rate
        plans = []
        for w in range(cfg.workers):
            plans.append(
                worker.WorkerPlan(
                    worker=w,
                    system=system,
                    mode=cfg.mode,
                    clients=plan.for_worker(w, cfg.workers),
                    loaders=[c for c in plan.loaders if (-1 - c.index) % cfg.workers == w],
                    per_sender_interval_s=interval,
                    window=cfg.window,
                    join_window=cfg.join_window,
                    join_interval_s=join_interval,
                    connect_window=cfg.connect_window,
                    body_chars=cfg.body_chars,
                    batch=cfg.batch and system == "roomcast",
                    offer_deflate=True,  # as a browser does; the server decides
                    history=cfg.history,
                    duration=cfg.duration,
                    warmup=cfg.warmup,
                    drain=cfg.drain,
                )
            )
        return plans

    async def measure(self, system: str, deployment: Deployment, tag: str) -> dict[str, Any]:
        cfg = self.config
        roles = deployment.pids()
        if self.db is not None and self.db.pid is not None:
            roles["db"] = [self.db.pid]
        monitor = Monitor(roles)
        broker = Monitor({"broker": broker_pids(urlsplit(self.amqp_url).port or 5672)})
        monitor.start()
        await asyncio.sleep(0.5)
        base = monitor.rss()
        plan = build_plan(cfg, deployment.urls, tag)
        pool = WorkerPool(self._plans(system, plan))
        results: dict[int, dict[str, Any]] = {}
        profiler = None
        if self.options.profile is not None:
            profiler = PhaseProfiler(self.options.profile, system, roles)
        try:
            ready = await self._until(
                pool,
                "ready",
                f"{system}: connect and join",
                total=float(cfg.clients * (1 if cfg.mode == "joins" else 2)),
                timeout=120 + cfg.clients / 20 + cfg.history * len(plan.loaders) / 50,
            )
            setup_cpu = sum(r.get("setup_cpu_s", 0.0) for r in ready.values())
            settle_s = await self._settle(pool, f"{system}: settling")
            metrics0 = await self._gateway_metrics(system, deployment)
            if profiler is not None:
                profiler.start()  # py-spy attaches within the 200 ms before t0
            cpu0, broker0, machine0 = monitor.cpu(), broker.cpu(), _machine_busy()
            t0 = time.monotonic_ns() + 200_000_000
            pool.send("go", t0)
            phase_timeout = cfg.duration + cfg.drain + 60
            results = await self._until(
                pool,
                "result",
                f"{system}: {cfg.scenario}",
                total=cfg.duration,
                timeout=phase_timeout,
                t0=t0,
            )
            cpu1, broker1, machine1 = monitor.cpu(), broker.cpu(), _machine_busy()
            if profiler is not None:
                summary = await asyncio.to_thread(profiler.stop)
                self.progress.note(f"roomcast bench: {system}'s profile in {summary}")
                profiler = None
            end = monitor.sample()
            metrics1 = await self._gateway_metrics(system, deployment)
        finally:
            if profiler is not None:
                await asyncio.to_thread(profiler.stop)
            await pool.close()
            monitor.stop()
        workers = [results[w] for w in sorted(results)]
        phase_s = max(r["phase_s"] for r in workers)
        cpu = {pid: cpu1.get(pid, 0.0) - cpu0.get(pid, 0.0) for pid in cpu1}
        by_role = {k: round(v, 3) for k, v in monitor.by_role(cpu).items()}
        own = [pid for role, pids in roles.items() if role != "db" for pid in pids]
        gateways = roles.get("gateway", []) + roles.get("peer", [])
        gw_base = sum(base.get(p, 0) for p in gateways)
        gw_end = sum(end.get(p, 0) for p in gateways)
        server: dict[str, Any] = {
            "server_cpu_s": sum(cpu.values()),
            "server_rss_mb": sum(monitor.peak.get(p, 0) for p in own) / MB,
            "server_cpu_by_role_s": by_role,
            "server_cpu_pct": round(100 * sum(cpu.values()) / phase_s, 1) if phase_s else None,
            "broker_cpu_s": round(cpu_delta(broker0, broker1), 3),
            "gateway_rss_base_mb": [round(base.get(p, 0) / MB, 1) for p in gateways],
            "gateway_rss_peak_mb": [round(monitor.peak.get(p, 0) / MB, 1) for p in gateways],
            "gateway_rss_end_mb": [round(end.get(p, 0) / MB, 1) for p in gateways],
            "rss_per_conn_kb": round((gw_end - gw_base) / 1024 / cfg.clients, 1)
            if gateways
            else None,
            "db_rss_mb": round(sum(monitor.peak.get(p, 0) for p in roles.get("db", [])) / MB, 1),
            "loadgen_setup_cpu_s": round(setup_cpu, 3),
            "settle_s": round(settle_s, 2),
        }
        if metrics0 is not None and metrics1 is not None:
            # the gateways' own view: publish to queued on every local socket of the room
            fanout0, fanout1 = summed(metrics0, FANOUT_METRIC), summed(metrics1, FANOUT_METRIC)
            if fanout1:
                server["gateway_fanout_ms"] = bucket_percentiles_ms(fanout0, fanout1)
            stages = stage_percentiles_ms(metrics0, metrics1)
            if stages:  # the gateways ran with ROOMCAST_TRACE_STAGES (roomcast.shared.bus.trace)
                server["gateway_stages_ms"] = stages
        # CPU the rest of the machine used meanwhile (other users' work shows up here)
        loadgen = sum(float(r.get("cpu_s", 0.0)) for r in workers)
        ours = server["server_cpu_s"] + server["broker_cpu_s"] + loadgen
        busy = machine1 - machine0
        server["machine_cpu_s"] = round(busy, 3)
        server["other_cpu_s"] = round(max(0.0, busy - ours), 3)
        if cfg.mode == "joins":
            window = phase_s
        elif cfg.mode == "chat":
            window = cfg.duration - cfg.warmup
        else:
            window = cfg.duration
        sizes = plan.room_sizes()
        expected = None
        if cfg.mode == "chat":
            expected = 0
            for r in workers:
                for room, n in r.get("acked_by_room", {}).items():
                    expected += n * max(0, sizes.get(room, 1) - 1)
        return {"workers": workers, "window": window, "server": server, "expected": expected}

    async def _gateway_metrics(self, system: str, deployment: Deployment) -> list[str] | None:
        """Each roomcast gateway's /metrics text (or None)."""
        if system != "roomcast":
            return None
        texts: list[str] = []
        for url in deployment.urls:
            parts = urlsplit(url)
            if parts.hostname is None or parts.port is None:
                return None
            text = await http_get(parts.hostname, parts.port, "/metrics")
            if text is None:
                return None
            texts.append(text)
        return texts

    async def _settle(self, pool: WorkerPool, label: str, limit: float = SETTLE_LIMIT) -> float:
        """Wait until the clients have received nothing for `SETTLE_QUIET` seconds (what the
        setup caused, such as `activeUsers` for every join, has been delivered), at most
        `limit`; returns how long it took."""
        self.progress.phase(label, limit)
        start = time.monotonic()
        counts: dict[int, int] = {}
        last_total, last_change = -1, start
        while True:
            now = time.monotonic()
            if now - start >= limit:
                self.progress.note(f"{label}: still receiving after {limit:g}s; measuring anyway")
                return now - start
            try:
                message = await asyncio.wait_for(pool.inbox.get(), 0.25)
            except TimeoutError:
                message = ("tick",)
            if message[0] == "progress":
                c = message[2]
                counts[message[1]] = c["events"] + c["deliveries"] + c["acks"] + c["joins"]
            elif message[0] in ("error", "eof"):
                raise BenchError(f"load generator {message[1]} failed while settling")
            total = sum(counts.values())
            if total != last_total:
                last_total, last_change = total, now
            elif now - last_change >= SETTLE_QUIET and len(counts) == len(pool.processes):
                return now - start
            self.progress.update(now - start, f"{total:,} events so far")

    async def _until(
        self,
        pool: WorkerPool,
        kind: str,
        label: str,
        *,
        total: float,
        timeout: float,
        t0: int | None = None,
    ) -> dict[int, dict[str, Any]]:
        """Collect one `kind` message from every worker, showing progress meanwhile."""
        done: dict[int, dict[str, Any]] = {}
        counts: dict[int, dict[str, int]] = {}
        deadline = time.monotonic() + timeout
        self.progress.phase(label, total)
        last_deliveries, last_at = 0, time.monotonic()
        speed = 0.0
        n = len(pool.processes)
        while len(done) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{label}: no {kind!r} from the load generator in {timeout:g}s")
            try:
                message = await asyncio.wait_for(pool.inbox.get(), min(remaining, 0.5))
            except TimeoutError:
                message = ("tick",)
            what = message[0]
            if what == kind:
                done[message[1]] = message[2]
            elif what == "progress":
                counts[message[1]] = message[2]
            elif what == "error":
                raise BenchError(f"load generator {message[1]} failed:\n{message[2]}")
            elif what == "eof" and message[1] not in done:
                raise BenchError(f"load generator {message[1]} exited during {label!r}")
            total_counts = {
                k: sum(c.get(k, 0) for c in counts.values())
                for k in ("connected", "joins", "deliveries", "acks", "errors", "sent")
            }
            now = time.monotonic()
            if now - last_at >= 0.5:
                speed = (total_counts["deliveries"] - last_deliveries) / (now - last_at)
                last_deliveries, last_at = total_counts["deliveries"], now
            if t0 is None:
                completed = float(total_counts["connected"]) + (
                    total_counts["joins"] if self.config.mode != "joins" else 0
                )
                detail = (
                    f"connected {total_counts['connected']}, joined {total_counts['joins']}, "
                    f"errors {total_counts['errors']}"
                )
            else:
                completed = min(total, max(0.0, (time.monotonic_ns() - t0) / 1e9))
                detail = (
                    f"{speed:,.0f} delivered/s, acks {total_counts['acks']:,}, "
                    f"joins {total_counts['joins']:,}, errors {total_counts['errors']}"
                )
            self.progress.update(completed, detail)
        return done

    # the whole run ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """The run's database (unless only a running target is measured) and work dir: the
        logs are kept when the run fails, removed otherwise."""
        failed = False
        try:
            with self.progress:
                if not self.options.target or self.options.vs:
                    from roomcast.shared.secantus import SecantusServer

                    self.db = SecantusServer(self.workdir / "db")
                    await self.db.start()
                yield
        except BaseException:
            failed = True
            raise
        finally:
            if self.db is not None:
                await self.db.stop()
            if failed:
                self.progress.note(f"roomcast bench: logs kept in {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

    @contextlib.asynccontextmanager
    async def deployed(self, system: str) -> AsyncIterator[Deployment]:
        """A fresh deployment of `system`, stopped after (its logs shown when it failed)."""
        deployment = self._deployment(system)
        self.progress.phase(f"{system}: starting", 1)
        await deployment.start()
        try:
            yield deployment
        except BaseException:
            self.progress.note(deployment.logs())
            raise
        finally:
            self.progress.phase(f"{system}: stopping", 1)
            await deployment.stop()

    async def main(self) -> dict[str, Any]:
        systems = ["roomcast"] + ([self.options.vs] if self.options.vs else [])
        outcomes: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        async with self.session():
            for round_ in range(self.options.rounds):
                order = systems if round_ % 2 == 0 else list(reversed(systems))
                for system in order:
                    async with self.deployed(system) as deployment:
                        tag = f"{self.run_id}{round_}{system[0]}"
                        outcomes[system].append(await self.measure(system, deployment, tag))
        return self.result(outcomes)

    def result(self, outcomes: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        cfg = self.config
        entries: dict[str, Any] = {}
        for system, runs in outcomes.items():
            workers = [w for run in runs for w in run["workers"]]
            window = sum(run["window"] for run in runs)
            server = _merge_server([run["server"] for run in runs])
            expected = None
            if all(run["expected"] is not None for run in runs):
                expected = sum(run["expected"] for run in runs)
            entry = summarize_system(
                workers, window_s=window, server=server, expected_deliveries=expected
            )
            if cfg.mode == "joins":
                entry["joins_per_s"] = round(entry["phase_joins"] / window, 1) if window else 0.0
            entry["rounds"] = len(runs)
            entries[system] = entry
        result: dict[str, Any] = {
            "tool": "roomcast bench",
            "schema": 1,
            "scenario": cfg.scenario,
            "run_id": self.run_id,  # names the run's exchanges, queues and databases
            "params": {
                **cfg.as_dict(),
                "vs": self.options.vs,
                "rounds": self.options.rounds,
                "target": self.options.target,
                "peer_deflate": self.options.peer_deflate,
            },
            "machine": machine(),
            "command": " ".join(["roomcast", *sys.argv[1:]]) if sys.argv else "",
            "systems": entries,
            "ratio": comparison(entries) if self.options.vs else None,
            "notes": self.notes(),
        }
        if self.options.vs:
            for entry in entries.values():
                entry["ratio"] = result["ratio"]
        return result

    def notes(self) -> list[str]:
        cfg = self.config
        notes = [
            "load generator, servers, RabbitMQ and the database share this machine "
            f"({os.cpu_count()} CPUs); compare loadgen_cpu_pct with 100 to see if it limited",
        ]
        if not self.options.target:
            notes.append(
                "roomcast ran with ROOMCAST_RATE_PER_SECOND and ROOMCAST_RATE_BURST at 1000000 "
                "(the default 10/s, burst 20, would refuse the bench's writers)"
            )
        if cfg.batch:
            notes.append(
                "roomcast clients connect with ?batch=1 (events ready in one loop turn coalesced)"
            )
        if self.options.vs:
            deflate = "on (uvicorn's default)" if self.options.peer_deflate else "off"
            notes.append(
                f"python-socketio peer: permessage-deflate {deflate}; roomcast declines it "
                "(its default); clients offer it as browsers do"
            )
        if cfg.mode == "chat" and cfg.rate <= 0:
            notes.append(f"senders paced by acknowledgements ({cfg.window} in flight each)")
        return notes


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes)."""
    import psutil

    t = psutil.cpu_times()
    return float(
        t.user
        + t.system
        + getattr(t, "nice", 0.0)
        + getattr(t, "irq", 0.0)
        + getattr(t, "softirq", 0.0)
        + getattr(t, "steal", 0.0)
    )


def _merge_server(servers: list[dict[str, Any]]) -> dict[str, Any]:
    """Several rounds of one system: CPU adds up, memory is the largest seen."""
    if len(servers) == 1:
        return servers[0]
    merged = dict(servers[-1])
    for key in (
        "server_cpu_s",
        "broker_cpu_s",
        "loadgen_setup_cpu_s",
        "machine_cpu_s",
        "other_cpu_s",
    ):
        merged[key] = sum(s.get(key) or 0.0 for s in servers)
    for key in ("server_rss_mb", "db_rss_mb", "rss_per_conn_kb", "server_cpu_pct"):
        values = [s[key] for s in servers if s.get(key) is not None]
        merged[key] = max(values) if values else None
    return merged


def run(options: Options) -> dict[str, Any]:
    """Run the bench; print the table; write the JSON and plot files asked for."""
    if options.scenario == "chaos":  # a scenario of its own: faults, then an audit
        from . import chaos

        return chaos.run(options)
    if options.faults is not None or options.down:
        raise ValueError("--faults and --down apply to the chaos scenario only")
    if options.profile is not None:
        try:
            pyspy()
        except PyspyMissingError as exc:
            raise BenchError(str(exc)) from None
    if options.target and options.gateways is not None:
        raise BenchError("--gateways does not apply with --target (one per URL)")
    gateways = options.gateways
    if options.target:
        gateways = len([u for u in options.target.split(",") if u.strip()])
    config = resolve(
        options.scenario,
        clients=options.clients,
        gateways=gateways,
        rooms=options.rooms,
        senders=options.senders,
        rate=options.rate,
        duration=options.duration,
        workers=options.workers,
        batch=options.batch,
    )
    if config.mode == "reconnect":
        from . import reconnect

        return reconnect.run(options, config)
    if options.sweep:
        from . import sweep

        return sweep.run(options, config)
    return publish(drive(Bench(options, config).main), options, report.print_table, report.plot)


def publish(
    result: dict[str, Any],
    options: Options,
    table: Callable[[dict[str, Any]], None],
    plot: Callable[[dict[str, Any], Path], None],
) -> dict[str, Any]:
    """Print the run's table; write the JSON and draw the plot when asked."""
    table(result)
    if options.json_path is not None:
        report.write_json(result, options.json_path)
    if options.plot_path is not None:
        plot(result, options.plot_path)
    return result


def drive(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one bench coroutine: file limit raised, services' logs quiet, SIGTERM as Ctrl-C
    (asyncio.run then cancels the run, which stops what it started)."""
    worker.raise_fd_limit()
    from roomcast.shared.logging import configure_logging

    configure_logging("warning", "console")

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        return asyncio.run(main())
    finally:
        signal.signal(signal.SIGTERM, previous)
