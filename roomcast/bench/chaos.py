"""`roomcast bench chaos`: chat through faults, and an audit of what it cost.

Writers and readers (`chaosclient`) chat in a few rooms across the gateways of a stack of the
run's own (`chaosstack`: a private RabbitMQ node, SecantusDB, history, presence, G gateways)
while the bench breaks one part after the other (`faults`). After each fault it measures how
long until chat works again end to end across gateways (`chaosprobe`). At the end the writers
finish what they had in flight, everyone settles, and the run is audited against the store
(`chaosaudit`); `chaosreport` prints the table, writes the JSON and draws the plot.

Readers join before anyone writes, and only do what a careful client does after a failure
(reconnect, `since`, paging back, re-join after a join without history): a gap left at the end
is one that roomcast gave them no way to notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .chaosaudit import audit
from .chaosclient import ChaosClient, Clock
from .chaosprobe import PROBE_ROOM, Prober
from .chaosroster import audit_rosters
from .chaosstack import ChaosStack
from .faults import inject, parse_kinds, schedule
from .runner import BenchError, Options, Progress, machine

TARGET_RECOVERY_S = 5.0
PROBE_LIMIT = 60.0  # seconds a fault may take to recover before the run calls it unrecovered
DRAIN_LIMIT = 30.0
SETTLE_LIMIT = 30.0
SETTLE_QUIET = 2.0
STORE_LIMIT = 30.0
ROSTER_LIMIT = 15.0  # presence forgets a killed gateway's users after 6 s by default
BIN_S = 1.0
_LOG_PROBLEM = re.compile(r'"level":\s*"(error|critical)"')
_LOGGER = re.compile(r'"logger":\s*"([^"]+)"')


@dataclass
class ChaosConfig:
    duration: float = 60.0
    gateways: int = 2
    writers: int = 4
    readers: int = 4
    rooms: int = 3
    rate: float = 20.0  # messages per second, all writers together
    faults: list[str] = field(default_factory=lambda: parse_kinds(None))
    warmup: float = 5.0
    down: float = 0.0  # seconds a fault lasts before the restart

    @classmethod
    def from_options(cls, options: Options) -> ChaosConfig:
        for name in ("vs", "target", "senders"):
            if getattr(options, name):
                raise ValueError(f"--{name} does not apply to the chaos scenario")
        cfg = cls(faults=parse_kinds(options.faults))
        if options.duration is not None:
            cfg.duration = options.duration
        if options.gateways is not None:
            cfg.gateways = options.gateways
        if cfg.gateways < 2:
            raise ValueError("chaos needs at least 2 gateways")
        if options.clients is not None:
            if options.clients < 2:
                raise ValueError("chaos needs at least 2 clients (a writer and a reader)")
            cfg.writers = options.clients // 2
            cfg.readers = options.clients - cfg.writers
        if options.rooms is not None:
            cfg.rooms = options.rooms
        if options.rate is not None:
            if options.rate <= 0:
                raise ValueError("chaos needs a --rate above 0")
            cfg.rate = options.rate
        cfg.warmup = min(5.0, cfg.duration * 0.15)
        cfg.down = options.down
        return cfg


class ChaosRun:
    def __init__(self, cfg: ChaosConfig, progress: Progress) -> None:
        self.cfg = cfg
        self.progress = progress
        self.run_id = secrets.token_hex(3)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"roomcast-chaos-{self.run_id}-"))
        self.stack = ChaosStack(self.workdir, self.run_id, cfg.gateways)
        self.clock = Clock()
        self.clients: list[ChaosClient] = []
        self.faults: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.t0_unix = time.time()

    def _make_clients(self) -> None:
        cfg, urls = self.cfg, self.stack.urls
        rooms = [f"room{i}" for i in range(cfg.rooms)]
        interval = cfg.writers / cfg.rate
        for i in range(cfg.readers):
            self.clients.append(
                ChaosClient(f"r{i}", urls, rooms, clock=self.clock, first_url=i, seed=i)
            )
        for i in range(cfg.writers):
            self.clients.append(
                ChaosClient(
                    f"w{i}",
                    urls,
                    [rooms[i % len(rooms)]],
                    clock=self.clock,
                    first_url=i + 1,
                    writer=True,
                    interval=interval,
                    seed=1000 + i,
                )
            )

    async def _start(self, clients: list[ChaosClient], label: str) -> None:
        for client in clients:
            self._tasks.append(asyncio.create_task(client.run(), name=f"chaos-{client.name}"))
        self.progress.phase(label, len(clients))
        deadline = time.monotonic() + 60
        while not all(c.joined for c in clients):
            if time.monotonic() > deadline:
                raise BenchError(f"{label}: not every client joined within 60 s")
            self.progress.update(sum(c.joined for c in clients), "")
            await asyncio.sleep(0.1)

    # the phases ----------------------------------------------------------------------------
    async def main(self) -> dict[str, Any]:
        keep = False
        try:
            self.progress.phase("starting RabbitMQ (private node), SecantusDB, roomcast", 1)
            await self.stack.start()
            self._make_clients()
            await self._start([c for c in self.clients if not c.writer], "readers joining")
            self.clock.t0 = time.monotonic()
            self.t0_unix = time.time()  # maps the run's seconds to the services' log timestamps
            await self._start([c for c in self.clients if c.writer], "writers joining")
            prober = Prober(self.stack.urls, self.run_id)
            baseline = await prober.until_works(30)
            if not baseline.ok:
                raise BenchError(f"chat does not work before any fault: {baseline.last_failure}")
            await self._chaos(prober)
            drained = await self._drain()
            settled = await self._settle()
            presence = await self._rosters()
            for client in self.clients:
                client.halt.set()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.progress.phase("reading the store", 1)
            stored = await self._stored()
            verdict = audit(stored, self.clients, self.t0_unix)
            result = self._result(verdict, drained=drained, settled=settled)
            result["presence"] = presence
            keep = not result["ok"]
            result["logs"] = str(self.workdir) if keep else None
            result["log_problems"] = self._log_problems()
            return result
        except BaseException:
            keep = True
            self.progress.note(self.stack.logs())
            raise
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.progress.phase("stopping", 1)
            await self.stack.stop()
            if keep:
                shutil.rmtree(self.workdir / "db", ignore_errors=True)
                self.progress.note(f"roomcast bench chaos: logs kept in {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

    async def _chaos(self, prober: Prober) -> None:
        cfg = self.cfg
        times = schedule(cfg.duration, len(cfg.faults), cfg.warmup)
        self.progress.phase(f"chaos: {', '.join(cfg.faults)}", cfg.duration)
        ticker = asyncio.create_task(self._tick())
        turns: dict[str, int] = {}
        try:
            for kind, when in zip(cfg.faults, times, strict=True):
                await self._sleep_until(when)
                at = self.clock.now()
                started = time.monotonic()
                injected = await inject(kind, self.stack, turns.get(kind, 0), cfg.down)
                turns[kind] = turns.get(kind, 0) + 1
                ready = [
                    asyncio.create_task(s.ready(timeout=PROBE_LIMIT)) for s in injected.services
                ]
                probe = await prober.until_works(PROBE_LIMIT + cfg.down)
                ready_s = None
                if ready:
                    with contextlib.suppress(Exception):
                        await asyncio.gather(*ready)
                        ready_s = round(time.monotonic() - started, 2)
                self.faults.append(
                    {
                        "kind": kind,
                        "target": injected.target,
                        "at_s": round(at, 2),
                        "restarted_after_s": round(injected.down_s, 2),
                        "ready_after_s": ready_s,
                        "recovered_s": round(probe.at - started, 2) if probe.at else None,
                        "probe_attempts": probe.attempts,
                        "probe_last_failure": probe.last_failure,
                    }
                )
            await self._sleep_until(cfg.duration)
        finally:
            ticker.cancel()

    async def _sleep_until(self, when: float) -> None:
        delay = when - self.clock.now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _tick(self) -> None:
        while True:
            acked = sum(len(c.acked) for c in self.clients)
            last = self.faults[-1] if self.faults else None
            detail = f"acked {acked:,}, faults {len(self.faults)}/{len(self.cfg.faults)}"
            if last is not None:
                detail += f", {last['kind']} back in {last['recovered_s']} s"
            self.progress.update(min(self.cfg.duration, self.clock.now()), detail)
            await asyncio.sleep(0.5)

    async def _drain(self) -> bool:
        """Writers stop posting and finish what is unacknowledged (bounded)."""
        writers = [c for c in self.clients if c.writer]
        for writer in writers:
            writer.stop_writing.set()
        self.progress.phase("writers finishing", DRAIN_LIMIT)
        start = time.monotonic()
        while any(w.pending for w in writers):
            waited = time.monotonic() - start
            if waited > DRAIN_LIMIT:
                return False
            self.progress.update(waited, f"{sum(len(w.pending) for w in writers)} unacked")
            await asyncio.sleep(0.2)
        return True

    async def _settle(self) -> bool:
        """Until every client is connected with nothing to recover, and then quiet a while."""
        self.progress.phase("settling", SETTLE_LIMIT)
        start = time.monotonic()
        quiet_since: float | None = None
        while time.monotonic() - start < SETTLE_LIMIT:
            now = time.monotonic()
            if all(c.settled for c in self.clients):
                quiet_since = quiet_since or now
                if now - quiet_since >= SETTLE_QUIET:
                    return True
            else:
                quiet_since = None
            self.progress.update(now - start, f"{sum(c.settled for c in self.clients)} settled")
            await asyncio.sleep(0.1)
        return False

    async def _rosters(self) -> dict[str, Any]:
        """Each client's user lists against the gateways' rosters, while all are connected
        (outside the issue's targets: reported, not part of `ok`)."""
        self.progress.phase("comparing user lists with the rosters", ROSTER_LIMIT)
        rooms = sorted({r for c in self.clients for r in c.rooms})
        ports = [g.port for g in self.stack.gateways]
        return await audit_rosters(self.clients, ports, rooms, ROSTER_LIMIT)

    async def _stored(self) -> dict[str, list[dict[str, Any]]]:
        """Every message of the bench's rooms, from the store itself, once history has written
        all that was acknowledged (bounded: what is missing then is lost)."""
        from roomcast.shared.store.mongo import MongoMessageStore

        acked = {mid for c in self.clients for mid in c.acked}
        rooms = sorted({r for c in self.clients for r in c.rooms})
        store = MongoMessageStore(self.stack.db.url, self.stack.mongo_db)
        await store.open()
        try:
            deadline = time.monotonic() + STORE_LIMIT
            while True:
                stored = {room: await _whole_room(store, room) for room in rooms}
                ids = {m["id"] for messages in stored.values() for m in messages}
                if acked <= ids or time.monotonic() > deadline:
                    return stored
                await asyncio.sleep(1.0)
        finally:
            await store.close()

    # the result ----------------------------------------------------------------------------
    def _result(self, verdict: dict[str, Any], *, drained: bool, settled: bool) -> dict[str, Any]:
        cfg = self.cfg
        end = cfg.duration  # the timeline covers the chat, not the drain after it
        for fault in self.faults:
            fault["writers_back_s"] = self._writers_back(fault["at_s"])
            if fault["recovered_s"] is not None:
                # what the system took once the fault ended (`--down` is the fault's own)
                fault["back_after_fault_s"] = round(max(0.0, fault["recovered_s"] - cfg.down), 2)
            else:
                fault["back_after_fault_s"] = None
            fault["disconnects"] = self._disconnects(fault)
        recovered = [f["back_after_fault_s"] for f in self.faults]
        ok = (
            verdict["lost"] == 0
            and verdict["duplicated"] == 0
            and verdict["gaps"] == 0
            and all(r is not None and r <= TARGET_RECOVERY_S for r in recovered)
        )
        notes = [
            "faults follow one another; each waits until chat works again after the one before",
            "recovered_s: from the start of the fault until two new users on two different "
            "gateways join (with history) and each receives the other's message",
            "roomcast ran with ROOMCAST_RATE_PER_SECOND and ROOMCAST_RATE_BURST at 1000000",
        ]
        if not drained:
            notes.append("some writers still had unacknowledged messages when the drain ended")
        if not settled:
            notes.append("not every client had settled (connected, recovered) at the end")
        return {
            "tool": "roomcast bench",
            "schema": 1,
            "scenario": "chaos",
            "params": {**asdict(cfg), "probe_room": PROBE_ROOM},
            "machine": machine(),
            "command": " ".join(["roomcast", *sys.argv[1:]]) if sys.argv else "",
            "ok": ok,
            "t0_unix": round(self.t0_unix, 3),
            "targets": {
                "lost": 0,
                "duplicated": 0,
                "gaps": 0,
                "recovered_s": TARGET_RECOVERY_S,
            },
            "faults": self.faults,
            **verdict,
            "drained": drained,
            "settled": settled,
            "clients": [c.report() for c in self.clients],
            "timeline": self._timeline(end),
            "notes": notes,
        }

    def _writers_back(self, at: float) -> float | None:
        """From the fault until every writer had an ack again."""
        firsts = []
        for writer in (c for c in self.clients if c.writer):
            after = [t for t in writer.ack_times if t > at]
            if not after:
                return None
            firsts.append(after[0])
        return round(max(firsts) - at, 2) if firsts else None

    def _disconnects(self, fault: dict[str, Any]) -> int:
        later = [f["at_s"] for f in self.faults if f["at_s"] > fault["at_s"]]
        until = min(later) if later else float("inf")
        return sum(
            1 for c in self.clients for t in c.disconnect_times if fault["at_s"] <= t < until
        )

    def _timeline(self, end: float) -> dict[str, Any]:
        bins = int(end / BIN_S) + 1

        def binned(times: list[float]) -> list[int]:
            counts = [0] * bins
            for t in times:
                if 0 <= t < end:
                    counts[int(t / BIN_S)] += 1
            return counts

        clients = self.clients
        return {
            "bin_s": BIN_S,
            "acks": binned([t for c in clients if c.writer for t in c.ack_times]),
            "deliveries": binned([t for c in clients if not c.writer for t in c.live_times]),
            "disconnects": binned([t for c in clients for t in c.disconnect_times]),
        }

    def _log_problems(self) -> dict[str, Any]:
        """Error lines in the services' logs, per service and logger; the first few of
        roomcast's own (aio-pika and aiormq log every broker restart at error level)."""
        out: dict[str, Any] = {}
        for service in self.stack.services:
            try:
                lines = service.log.read_text(errors="replace").splitlines()
            except OSError:
                continue
            by_logger: Counter[str] = Counter()
            own: list[str] = []
            for line in lines:
                if not _LOG_PROBLEM.search(line):
                    continue
                found = _LOGGER.search(line)
                logger = found.group(1) if found else "?"
                by_logger[logger] += 1
                if not logger.startswith(("aiormq", "aio_pika")) and len(own) < 5:
                    own.append(line[:600])
            if by_logger:
                out[f"{service.role}:{service.port}"] = {
                    "count": sum(by_logger.values()),
                    "by_logger": dict(by_logger),
                    "first": own,
                }
        return out


async def _whole_room(store: Any, room: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    before: str | None = None
    while True:
        page = await store.before(room, before, 1000)
        if not page:
            return messages
        messages = [m.model_dump() for m in page] + messages
        before = page[0].id


def run(options: Options) -> dict[str, Any]:
    """`roomcast bench chaos`: run it, print the table, write the JSON and the plot."""
    from roomcast.shared.logging import configure_logging

    from . import chaosreport, report, worker

    cfg = ChaosConfig.from_options(options)
    worker.raise_fd_limit()
    configure_logging("warning", "console")

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # asyncio.run cancels the run, which stops what it started

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        with Progress(options.quiet) as progress:
            result = asyncio.run(ChaosRun(cfg, progress).main())
    finally:
        signal.signal(signal.SIGTERM, previous)
    chaosreport.print_table(result)
    if options.json_path is not None:
        report.write_json(result, options.json_path)
    if options.plot_path is not None:
        chaosreport.plot(result, options.plot_path)
    return result
