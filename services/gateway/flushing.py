"""When sockets' queued events are written: at the end of the loop turn that queued them, or,
while the gateway is busy, at most once per short interval.

Why: each write is a `send()` system call, the largest share of a delivery's CPU (about half of
the gateway's samples at saturation, docs/performance.md). At a few hundred room events per
second a socket's events arrive in different loop turns, so writing at the end of every turn
costs one `send()` per event per socket. While the gateway is busy (its loop's thread wanted a
CPU, running or waiting to run, for at least `busy_share` of the last `window`) a flush that
comes less than `interval` after the previous one waits for the rest of it, so the events of
several turns share one `send()` (and, with `batch=1`, one frame): fewer system calls when CPU
is what runs out, at the price of at most `interval` of latency then. While the gateway is idle
nothing waits, so low-load latency is that of an immediate write; busy or not, an event after a
quiet `interval` is written at the end of its turn. The share is measured at most once per
`window`, with hysteresis (idle again below half of `busy_share`) so the mode does not flap at
the line. Waiting to run counts: a gateway that shares its cores with other busy processes gets
less CPU than it wants, and by its CPU time alone would look idle exactly when it has the least
to spare (`Demand`). The interval is `ROOMCAST_FLUSH_PACE_MS` (default 8: at 300 room events per
second to 100 sockets the gateway's CPU per delivery measured 14.0-19.4 us with 8, 17.4-20.1
with 4 and 22.1 unpaced on a quiet machine; 0 turns pacing off).

One scheduler per event loop serves every socket: one callback per flush for all of them, not a
callback handle per socket and event.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from collections.abc import Callable
from typing import Protocol

import structlog
from prometheus_client import Counter, Gauge

log = structlog.get_logger(__name__)


INTERVAL = 0.008  # seconds; the gateway passes `Settings.flush_pace_ms` (ROOMCAST_FLUSH_PACE_MS)
BUSY_SHARE = 0.5  # of the wall time, over a window
WINDOW = 0.25  # seconds over which the CPU share is measured

FLUSHES = Counter(
    "roomcast_gateway_flushes_total",
    "Passes that wrote every socket with queued events, by when they ran: at the end of the "
    "loop turn (idle), or paced to one per interval (busy)",
    ["mode"],
)
SOCKET_WRITES = Counter(
    "roomcast_gateway_flushed_sockets_total",
    "Sockets written by the flush passes (divided by the passes: sockets per pass)",
)
PACED = Gauge(
    "roomcast_gateway_flush_paced",
    "1 while the gateway is busy and paces its flushes, else 0",
)


class Demand:
    """Seconds the calling thread ran or waited on a run queue (Linux's schedstat), read with one
    `pread`; where that file is missing, the thread's CPU time alone."""

    def __init__(self, path: str = "/proc/thread-self/schedstat") -> None:
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY)
        except OSError:
            self._fd = None

    def __call__(self) -> float:
        if self._fd is not None:
            try:
                ran, waited = os.pread(self._fd, 128, 0).split()[:2]
                return (int(ran) + int(waited)) / 1e9
            except (OSError, ValueError):
                self._fd = None
        return time.thread_time()

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


class Flushable(Protocol):
    def flush(self) -> None: ...


class FlushScheduler:
    """Collects the sockets with something to write and flushes them together (module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        interval: float = INTERVAL,
        busy_share: float = BUSY_SHARE,
        window: float = WINDOW,
        demand: Callable[[], float] | None = None,  # seconds wanted so far; `Demand()` if None
    ) -> None:
        self._loop = loop
        self._interval = interval
        self._busy_share = busy_share
        self._window = window
        self._demand = demand if demand is not None else Demand()
        self._due: list[Flushable] = []
        self._scheduled = False
        self._last = -interval  # loop time of the last flush
        self._busy = False
        self._window_start = loop.time()
        self._window_demand = self._demand()
        self._turn = FLUSHES.labels("turn").inc
        self._paced = FLUSHES.labels("paced").inc

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def interval(self) -> float:
        return self._interval

    def want(self, conn: Flushable) -> None:
        """`conn` has events queued: flush it with the next pass (it asks once per pass)."""
        self._due.append(conn)
        if self._scheduled:
            return
        self._scheduled = True
        now = self._loop.time()
        if now - self._window_start >= self._window and now > self._window_start:
            self._measure(now)
        due = self._last + self._interval
        if self._busy and due > now and self._interval:
            self._loop.call_at(due, self._run, True)
        else:
            self._loop.call_soon(self._run, False)

    def _measure(self, now: float) -> None:
        wanted = self._demand()
        share = (wanted - self._window_demand) / (now - self._window_start)
        self._window_start, self._window_demand = now, wanted
        busy = share >= (self._busy_share / 2 if self._busy else self._busy_share)
        if busy != self._busy:
            self._busy = busy
            PACED.set(1 if busy else 0)
            log.info("gateway flush pacing", paced=busy, demand_share=round(share, 2))

    def _run(self, paced: bool) -> None:
        due, self._due = self._due, []
        self._scheduled = False
        self._last = self._loop.time()
        (self._paced if paced else self._turn)()
        SOCKET_WRITES.inc(len(due))
        for conn in due:
            try:
                conn.flush()
            except Exception:  # one socket's failure must not leave the others unwritten
                log.exception("socket flush failed")


_schedulers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FlushScheduler] = (
    weakref.WeakKeyDictionary()
)


def scheduler(interval: float = INTERVAL) -> FlushScheduler:
    """The running loop's scheduler, made on first use with `interval` (seconds)."""
    loop = asyncio.get_running_loop()
    found = _schedulers.get(loop)
    if found is None:
        found = _schedulers[loop] = FlushScheduler(loop, interval=interval)
    return found
