"""A load-generator process: a share of the clients, on its own event loop.

The parent (`runner`) starts it with a plan and talks to it over a pipe:

    worker → ("ready", summary)        connected (and joined, except in join-storm)
    parent → ("go", t0_ns)             start the measured phase at t0 (time.monotonic_ns)
    worker → ("progress", counts)      every 0.5 s
    worker → ("result", result)        the phase is over (see `stats.summarize_system`)
    parent → ("close",)                close every socket and exit
    worker → ("error", text)           something went wrong; it exits

Latency: a writer puts `t=<monotonic_ns>|` at the start of each chat body, and the reader
subtracts it from its own clock reading when the frame arrives. CLOCK_MONOTONIC is one clock for
every process of the machine, so sender and reader may be in different processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import resource
import signal
import sys
import time
import traceback
from collections.abc import Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson

from roomcast.shared import gcpauses

from .scenarios import ClientSpec
from .stats import TIMELINE_BIN_S, Histogram
from .wsclient import WSClient, connect

PROGRESS_EVERY = 0.5
QUIET_S = 1.0  # no delivery for this long: the system has caught up
JOIN_TIMEOUT = 30.0
BIN_NS = int(TIMELINE_BIN_S * 1e9)


@dataclass
class WorkerPlan:
    worker: int
    system: str  # "roomcast" | "socketio"
    mode: str  # "chat" | "joins" | "idle"
    clients: list[ClientSpec]
    loaders: list[ClientSpec]
    per_sender_interval_s: float | None  # None: paced by acknowledgements
    window: int
    join_window: int
    join_interval_s: float | None  # join-storm with --rate: this worker's interval
    connect_window: int
    body_chars: int
    batch: bool
    offer_deflate: bool
    history: int
    duration: float
    warmup: float
    drain: float


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Meter:
    """This process's counters and histograms."""

    def __init__(self) -> None:
        self.latency = Histogram()
        self.join = Histogram()
        self.ack = Histogram()
        self.errors: dict[str, int] = {}
        self.timeline: list[int] = []
        self.acked_by_room: dict[str, int] = {}
        self.delivered = 0  # in the window
        self.delivered_all = 0  # of messages sent during the run
        self.deliveries_seen = 0  # every chat delivery (progress)
        self.acks = 0  # in the window
        self.acks_seen = 0
        self.sent = 0
        self.events = 0
        self.joins = 0
        self.phase_joins = 0  # joins completed in the measured phase
        self.connected = 0
        self.last_join_ns = 0
        self.last_delivery_ns = 0
        self.t0 = 0
        self.win_start = 0
        self.win_end = 0
        self.run_end = 0
        self.active = False  # between go and the end of the phase

    def start(self, t0: int, warmup: float, duration: float, *, joins: bool = False) -> None:
        if joins:  # the join-storm's histogram holds the storm's joins only
            self.join = Histogram()
        self.t0 = t0
        self.win_start = t0 + int(warmup * 1e9)
        self.win_end = self.run_end = t0 + int(duration * 1e9)
        self.active = True

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def tick(self, now: int) -> None:
        """One unit for the throughput-over-time chart."""
        index = (now - self.t0) // BIN_NS
        if index < 0:
            return
        line = self.timeline
        if index >= len(line):
            line.extend([0] * (index + 1 - len(line)))
        line[index] += 1

    def delivery(self, sent: int, now: int) -> None:
        self.deliveries_seen += 1
        self.last_delivery_ns = now
        if not self.active:
            return
        if self.t0 <= sent <= self.run_end:
            self.delivered_all += 1
            if sent >= self.win_start and sent < self.win_end:
                self.latency.record((now - sent) // 1000)
        if self.win_start <= now < self.win_end:
            self.delivered += 1
        self.tick(now)

    def acked(self, room: str, sent: int, now: int) -> None:
        self.acks_seen += 1
        if not self.active:
            return
        if self.win_start <= now < self.win_end:
            self.acks += 1
        if self.t0 <= sent <= self.run_end:
            self.acked_by_room[room] = self.acked_by_room.get(room, 0) + 1
            if sent >= self.win_start and sent < self.win_end:
                self.ack.record((now - sent) // 1000)

    def progress(self) -> dict[str, int]:
        return {
            "connected": self.connected,
            "joins": self.joins,
            "deliveries": self.deliveries_seen,
            "acks": self.acks_seen,
            "sent": self.sent,
            "events": self.events,
            "errors": sum(self.errors.values()),
        }


class Client:
    """One bench client: a socket, its join, and its chat messages awaiting an ack."""

    event_prefix = ""

    def __init__(self, spec: ClientSpec, meter: Meter, body_chars: int) -> None:
        self.spec = spec
        self.meter = meter
        self.ws: WSClient | None = None
        self.pending: dict[int, int] = {}  # ref -> sent at (ns)
        self.seq = 0
        self.closing = False
        self.join_sent = 0
        self.history_at = 0
        self.join_acked = False
        self.joined: asyncio.Future[None] | None = None
        self.acked_event = asyncio.Event()
        self.pad = "x" * max(0, body_chars - 24)

    # to implement per protocol
    def path(self, batch: bool) -> str:
        raise NotImplementedError

    async def handshake(self) -> None:
        """After the WebSocket opened: whatever the protocol needs before events."""

    def join_frame(self, ref: int) -> str:
        raise NotImplementedError

    def chat_frame(self, ref: int, body: str) -> str:
        raise NotImplementedError

    def on_text(self, text: str, now: int) -> None:
        raise NotImplementedError

    # shared -------------------------------------------------------------------------------------
    def attach(self, ws: WSClient) -> None:
        self.ws = ws

    def send(self, text: str) -> bool:
        ws = self.ws
        return ws is not None and ws.send_text(text)

    def on_closed(self, future: asyncio.Future[int | None]) -> None:
        if not self.closing:
            code = None if future.cancelled() else future.result()
            self.meter.error(f"closed_{code}")
            if self.joined is not None and not self.joined.done():
                self.joined.set_exception(ConnectionError(f"closed ({code})"))

    async def join(self) -> None:
        loop = asyncio.get_running_loop()
        self.joined = loop.create_future()
        self.join_acked = False
        self.history_at = 0
        self.join_sent = time.monotonic_ns()
        if not self.send(self.join_frame(0)):
            raise ConnectionError("socket closed")
        await asyncio.wait_for(self.joined, JOIN_TIMEOUT)

    def on_history(self, now: int) -> None:
        if self.join_sent and not self.history_at:
            self.history_at = now
            self.meter.join.record((now - self.join_sent) // 1000)
            self._join_progress(now)

    def on_join_ack(self, now: int) -> None:
        self.join_acked = True
        self._join_progress(now)

    def _join_progress(self, now: int) -> None:
        if self.join_acked and self.history_at and self.joined and not self.joined.done():
            self.meter.joins += 1
            self.meter.last_join_ns = now
            if self.meter.active:
                self.meter.phase_joins += 1
                self.meter.tick(now)
                if self.meter.win_start <= now:
                    self.meter.acks += 1
            self.joined.set_result(None)

    def on_join_error(self, code: str) -> None:
        self.meter.error(f"join_{code}")
        if self.joined is not None and not self.joined.done():
            self.joined.set_exception(RuntimeError(code))

    def send_chat(self) -> bool:
        self.seq += 1
        ref = self.seq
        now = time.monotonic_ns()
        body = f"t={now}|{self.pad}"
        if not self.send(self.chat_frame(ref, body)):
            return False
        self.pending[ref] = now
        self.meter.sent += 1
        return True

    def on_chat_ack(self, ref: int, now: int) -> None:
        sent = self.pending.pop(ref, None)
        if sent is not None:
            self.meter.acked(self.spec.room, sent, now)
            self.acked_event.set()

    def on_chat_error(self, ref: int, code: str) -> None:
        self.pending.pop(ref, None)
        self.meter.error(code)
        self.acked_event.set()

    def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            self.ws.close()


class RoomcastClient(Client):
    """PROTOCOL.md's envelope; with `?batch=1` a frame holds one event per line."""

    def path(self, batch: bool) -> str:
        return "/ws?batch=1" if batch else "/ws"

    def join_frame(self, ref: int) -> str:
        s = self.spec
        return (
            f'{{"event":"userJoin","data":{{"username":"{s.username}","room":"{s.room}"}},'
            f'"ref":"{ref}"}}'
        )

    def chat_frame(self, ref: int, body: str) -> str:
        s = self.spec
        return (
            f'{{"event":"updateChat","data":{{"username":"{s.username}","body":"{body}",'
            f'"time":0,"room":"{s.room}"}},"ref":"{ref}"}}'
        )

    def on_text(self, text: str, now: int) -> None:
        lines = text.split("\n") if "\n" in text else (text,)
        meter = self.meter
        for line in lines:
            if line.startswith('{"event":"updateChat"'):
                i = line.find('"t=')
                j = line.find("|", i)
                if i > 0 and j > 0:
                    meter.delivery(int(line[i + 3 : j]), now)
            elif line.startswith('{"event":"ack","ref":"'):
                ref = int(line[22 : line.index('"', 22)])
                if ref:
                    self.on_chat_ack(ref, now)
                else:
                    self.on_join_ack(now)
            elif line.startswith('{"event":"msgHistory"'):
                self.on_history(now)
            elif line.startswith('{"event":"error"'):
                frame = orjson.loads(line)
                code = frame.get("data", {}).get("code", "error")
                ref = frame.get("ref")
                if ref is None:
                    meter.error(code)
                elif int(ref) == 0:
                    self.on_join_error(code)
                else:
                    self.on_chat_error(int(ref), code)
            else:
                meter.events += 1


class SocketIOClient(Client):
    """Socket.IO v5 over Engine.IO v4, WebSocket transport only (no long-polling first).

    `0{...}` open → `40` connect to "/" → `40{"sid"}`; events `42["name",data]`, with an ack
    id `42<id>["name",data]` answered by `43<id>[result]`; the server's ping `2` gets `3`."""

    def __init__(self, spec: ClientSpec, meter: Meter, body_chars: int) -> None:
        super().__init__(spec, meter, body_chars)
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def path(self, batch: bool) -> str:
        return "/socket.io/?EIO=4&transport=websocket"

    async def handshake(self) -> None:
        await asyncio.wait_for(self.connected, JOIN_TIMEOUT)

    def join_frame(self, ref: int) -> str:
        s = self.spec
        return f'42{ref}["userJoin",{{"username":"{s.username}","room":"{s.room}"}}]'

    def chat_frame(self, ref: int, body: str) -> str:
        s = self.spec
        return (
            f'42{ref}["updateChat",{{"username":"{s.username}","body":"{body}",'
            f'"time":0,"room":"{s.room}"}}]'
        )

    def on_text(self, text: str, now: int) -> None:
        meter = self.meter
        if text.startswith('42["updateChat"'):
            i = text.find('"t=')
            j = text.find("|", i)
            if i > 0 and j > 0:
                meter.delivery(int(text[i + 3 : j]), now)
        elif text.startswith("43"):
            k = text.index("[", 2)
            ref = int(text[2:k])
            if text.startswith('[{"error"', k):
                error = orjson.loads(text[k:])[0]["error"]
                code = error.get("code", "error") if isinstance(error, dict) else str(error)
                if ref:
                    self.on_chat_error(ref, code)
                else:
                    self.on_join_error(code)
            elif ref:
                self.on_chat_ack(ref, now)
            else:
                self.on_join_ack(now)
        elif text.startswith('42["msgHistory"'):
            self.on_history(now)
        elif text == "2":
            self.send("3")
        elif text.startswith("40"):
            if not self.connected.done():
                self.connected.set_result(None)
        elif text.startswith("0"):
            self.send("40")
        elif text.startswith("44"):
            meter.error("connect_refused")
            if not self.connected.done():
                self.connected.set_exception(ConnectionError(text))
        elif text.startswith("1"):
            meter.error("engineio_close")
        else:
            meter.events += 1


CLIENTS: dict[str, type[Client]] = {"roomcast": RoomcastClient, "socketio": SocketIOClient}


class Worker:
    def __init__(self, pipe: Connection, plan: WorkerPlan) -> None:
        self.pipe = pipe
        self.plan = plan
        self.meter = Meter()
        kind = CLIENTS[plan.system]
        self.clients = [kind(spec, self.meter, plan.body_chars) for spec in plan.clients]
        self.loaders = [kind(spec, self.meter, plan.body_chars) for spec in plan.loaders]
        self.inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    # pipe ---------------------------------------------------------------------------------------
    def _readable(self) -> None:
        try:
            while self.pipe.poll():
                self.inbox.put_nowait(self.pipe.recv())
        except (EOFError, OSError):
            self.inbox.put_nowait(("close",))

    def tell(self, *message: Any) -> None:
        self.pipe.send(message)

    async def expect(self, kind: str) -> tuple[Any, ...]:
        while True:
            message = await self.inbox.get()
            if message[0] == kind:
                return message
            if message[0] == "close":
                raise SystemExit(0)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            self.tell("progress", self.plan.worker, self.meter.progress())

    # phases -------------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pipe.fileno(), self._readable)
        reporter = asyncio.create_task(self._report())
        try:
            setup_cpu = cpu_seconds()
            if self.loaders:
                await self._open(self.loaders)
                await self._join_all(self.loaders)
                await self._post_history()
            await self._open(self.clients)
            if self.plan.mode != "joins":
                await self._join_all(self.clients)
            # the clients are made: out of the collector's sight, as a server's start-up is (a
            # full collection over thousands of sockets stalled the load in the join storm)
            gcpauses.settle()
            self.tell(
                "ready",
                self.plan.worker,
                {**self.meter.progress(), "setup_cpu_s": cpu_seconds() - setup_cpu},
            )
            _, t0 = await self.expect("go")
            wait = (t0 - time.monotonic_ns()) / 1e9
            if wait > 0:
                await asyncio.sleep(wait)
            cpu0 = cpu_seconds()
            self.meter.start(
                t0, self.plan.warmup, self.plan.duration, joins=self.plan.mode == "joins"
            )
            if self.plan.mode == "chat":
                phase_end = await self._chat(t0)
            elif self.plan.mode == "joins":
                phase_end = await self._storm(t0)
            else:
                await asyncio.sleep(self.plan.duration)
                phase_end = time.monotonic_ns()
            self.meter.active = False
            for client in self.clients:
                stale = sum(1 for sent in client.pending.values() if sent <= self.meter.run_end)
                if stale:
                    self.meter.errors["unacked"] = self.meter.errors.get("unacked", 0) + stale
            result = self._result(cpu_seconds() - cpu0, (phase_end - t0) / 1e9)
            self.tell("result", self.plan.worker, result)
            await self.expect("close")
        finally:
            reporter.cancel()
            for client in self.clients + self.loaders:
                client.close()
            await asyncio.sleep(0.2)

    def _result(self, cpu: float, phase_s: float) -> dict[str, Any]:
        m = self.meter
        return {
            "latency": m.latency.to_dict(),
            "join": m.join.to_dict(),
            "ack": m.ack.to_dict(),
            "delivered": m.delivered,
            "delivered_all": m.delivered_all,
            "acks": m.acks,
            "sent": m.sent,
            "events": m.events,
            "joins": m.joins,
            "phase_joins": m.phase_joins,
            "errors": dict(m.errors),
            "timeline": m.timeline,
            "acked_by_room": m.acked_by_room,
            "cpu_s": cpu,
            "phase_s": phase_s,
            "last_join_s": (m.last_join_ns - m.t0) / 1e9 if m.last_join_ns > m.t0 else None,
        }

    async def _open(self, clients: list[Client]) -> None:
        window = asyncio.Semaphore(self.plan.connect_window)
        plan = self.plan

        async def open_one(client: Client) -> None:
            async with window:
                url = client.spec.url.rstrip("/") + client.path(plan.batch)
                try:
                    client.ws = await connect(
                        url,
                        client.on_text,
                        offer_deflate=plan.offer_deflate,
                        timeout=30,
                        bind=client.attach,
                    )
                    client.ws.closed.add_done_callback(client.on_closed)
                    await client.handshake()
                except Exception as exc:
                    self.meter.error(f"connect_{type(exc).__name__}")
                    client.ws = None
                    return
                self.meter.connected += 1

        await asyncio.gather(*(open_one(c) for c in clients))

    async def _join_all(self, clients: list[Client], interval: float | None = None) -> None:
        window = asyncio.Semaphore(self.plan.join_window)
        start = time.monotonic()

        async def join_one(n: int, client: Client) -> None:
            if client.ws is None:
                return
            if interval:
                delay = start + n * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            async with window:
                try:
                    await client.join()
                except TimeoutError:
                    self.meter.error("join_timeout")
                except (ConnectionError, RuntimeError):
                    pass  # counted where it was seen

        await asyncio.gather(*(join_one(n, c) for n, c in enumerate(clients)))

    async def _post_history(self) -> None:
        """Each loader posts `history` messages to its room, 8 in flight at a time."""

        async def post(client: Client) -> None:
            if client.ws is None:
                return
            done = 0
            deadline = time.monotonic() + 60
            while done < self.plan.history and time.monotonic() < deadline:
                while len(client.pending) < 8 and done + len(client.pending) < self.plan.history:
                    if not client.send_chat():
                        return
                client.acked_event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.acked_event.wait(), 10)
                done = client.seq - len(client.pending)

        await asyncio.gather(*(post(c) for c in self.loaders))
        self.meter.sent = 0

    async def _chat(self, t0: int) -> int:
        plan = self.plan
        end = t0 + int(plan.duration * 1e9)
        senders = [c for c in self.clients if c.spec.role == "sender" and c.ws is not None]
        interval = plan.per_sender_interval_s
        loops: list[Coroutine[Any, Any, None]] = []
        for n, client in enumerate(senders):
            if interval is not None:
                # spread the senders' phases evenly over one interval
                offset = int(interval * 1e9 * ((n + 0.5) / max(1, len(senders))))
                loops.append(self._open_loop(client, t0 + offset, end))
            else:
                loops.append(self._paced(client, end))
        await asyncio.gather(*loops)
        # Drain: late deliveries still count (with their real latency) until every ack is in
        # and no delivery came for QUIET_S, or at most `drain` seconds after the end.
        drain_end = end + int(plan.drain * 1e9)
        quiet = int(QUIET_S * 1e9)
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic_ns()
            if now >= drain_end:
                break
            settled = now - max(self.meter.last_delivery_ns, end) >= quiet
            if settled and all(not c.pending for c in senders):
                break
        return time.monotonic_ns()

    async def _open_loop(self, client: Client, start: int, end: int) -> None:
        step = int((self.plan.per_sender_interval_s or 1.0) * 1e9)
        at = start
        while at < end:
            now = time.monotonic_ns()
            if at > now:
                await asyncio.sleep((at - now) / 1e9)
            if not client.send_chat():
                return
            at += step

    async def _paced(self, client: Client, end: int) -> None:
        window = self.plan.window
        while time.monotonic_ns() < end:
            while len(client.pending) < window:
                if not client.send_chat():
                    return
            client.acked_event.clear()
            remaining = (end - time.monotonic_ns()) / 1e9
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.acked_event.wait(), remaining)

    async def _storm(self, t0: int) -> int:
        """Every client joins its room; the phase ends when all have (or at the duration)."""
        try:
            async with asyncio.timeout(self.plan.duration):
                await self._join_all(self.clients, self.plan.join_interval_s)
        except TimeoutError:
            self.meter.error("storm_timeout")
        return self.meter.last_join_ns or time.monotonic_ns()


def die_with_parent() -> None:
    """SIGTERM when the bench process dies (Linux), whatever phase this process is in."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))


def main(pipe: Connection, plan: WorkerPlan) -> None:
    """The process's entry point (multiprocessing, spawn)."""
    die_with_parent()
    raise_fd_limit()

    async def run() -> None:
        await Worker(pipe, plan).run()

    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            asyncio.run(run())
        else:
            uvloop.run(run())
    except SystemExit:
        pass
    except BaseException:
        with contextlib.suppress(Exception):
            pipe.send(("error", plan.worker, traceback.format_exc()))
        raise
