"""When sockets' queued events are written: at the end of the loop turn that queued them, or,
while the gateway is busy, at most once per short interval.

Why: each write is a `send()` system call, the largest share of a delivery's CPU (about half of
the gateway's samples at saturation, docs/performance.md). At a few hundred room events per
second a socket's events arrive in different loop turns, so writing at the end of every turn
costs one `send()` per event per socket. While the gateway is busy (its process used at least
`busy_share` of a CPU over the last `window`) a flush that comes less than `interval` after the
previous one waits for the rest of it, so the events of several turns share one `send()` (and,
with `batch=1`, one frame): fewer system calls when CPU is what runs out, at the price of at most
`interval` of latency then. While the gateway is idle nothing waits, so low-load latency is that
of an immediate write; busy or not, an event after a quiet `interval` is written at the end of
its turn. The share is read from the process's CPU clock at most once per `window`, with
hysteresis (idle again below half of `busy_share`) so the mode does not flap at the line. The
interval is `ROOMCAST_FLUSH_PACE_MS` (default 4; 0 turns pacing off).

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


def interval_ms(raw: str | None, default: float = 4.0) -> float:
    """`ROOMCAST_FLUSH_PACE_MS`: milliseconds between flushes while busy (0: never paced; at most
    50, since an event may wait that long); an unreadable value is the default."""
    try:
        value = float(raw) if raw is not None and raw.strip() else default
    except ValueError:
        return default
    return min(max(value, 0.0), 50.0)


INTERVAL = interval_ms(os.environ.get("ROOMCAST_FLUSH_PACE_MS")) / 1000  # read once, at import
BUSY_SHARE = 0.5  # of one CPU, over a window
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
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self._loop = loop
        self._interval = interval
        self._busy_share = busy_share
        self._window = window
        self._cpu = cpu
        self._due: list[Flushable] = []
        self._scheduled = False
        self._last = -interval  # loop time of the last flush
        self._busy = False
        self._window_start = loop.time()
        self._window_cpu = cpu()
        self._turn = FLUSHES.labels("turn").inc
        self._paced = FLUSHES.labels("paced").inc

    @property
    def busy(self) -> bool:
        return self._busy

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
        cpu = self._cpu()
        share = (cpu - self._window_cpu) / (now - self._window_start)
        self._window_start, self._window_cpu = now, cpu
        busy = share >= (self._busy_share / 2 if self._busy else self._busy_share)
        if busy != self._busy:
            self._busy = busy
            PACED.set(1 if busy else 0)
            log.info("gateway flush pacing", paced=busy, cpu_share=round(share, 2))

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


def scheduler() -> FlushScheduler:
    """The running loop's scheduler (made on first use)."""
    loop = asyncio.get_running_loop()
    found = _schedulers.get(loop)
    if found is None:
        found = _schedulers[loop] = FlushScheduler(loop)
    return found
