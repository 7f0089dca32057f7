"""How long Python's garbage collector stops each service, as a metric and, when long, a log line;
and the collector tuned for a server that starts once and then holds many long-lived objects.

Why: a full (generation 2) collection walks every live container object, and a gateway holding
thousands of sockets has millions of them. In the join storm (docs/performance.md, "Issue 11,
second pass") full collections took 93-178 ms per gateway, and every join the process held
waited that long; nothing in the process's own metrics showed it. `roomcast_gc_pause_seconds`
shows each collection's pause by generation; a pause of `SLOW` or more is logged (at most one
line per generation per 10 s, counting those left out).

`settle()`, once start-up is over: what start-up made (modules, classes, the app: ~100,000
objects in a gateway) is moved out of the collector's sight (`gc.freeze`), and young objects
are collected every `YOUNG` net allocations instead of every 700. A join allocates objects that
outlive it (its socket's state), so at 700 the collector ran several hundred times per join
storm and promoted most of what it saw. Measured over a whole `roomcast bench join-storm` (set-up,
storm, tear-down), a gateway's collections took 1.0-1.3 s, and 0.3-0.45 s settled
(docs/performance.md, "Issue 11, third pass"). Full collections still run (the older
generations' thresholds are Python's), so cyclic garbage is still freed.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import Histogram

log = structlog.get_logger(__name__)

PAUSES = Histogram(
    "roomcast_gc_pause_seconds",
    "Garbage collections by generation: how long each stopped the process",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
SLOW = 0.1  # seconds: a pause this long is logged
YOUNG = 20_000  # net allocations between young collections (Python's default: 700)
LOG_EVERY = 10.0  # seconds between lines per generation


class PauseWatch:
    """The `gc.callbacks` entry: times each collection from its start to its stop."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        self._logged: dict[int, float] = {}
        self._left_out: dict[int, int] = {}
        self._observe = {g: PAUSES.labels(str(g)).observe for g in range(3)}

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        pause = self._clock() - self._started
        generation = int(info.get("generation", 2))
        self._observe[generation](pause)
        if pause >= SLOW:
            self._slow(generation, pause, int(info.get("collected", 0)))

    def _slow(self, generation: int, pause: float, collected: int) -> None:
        now = self._clock()
        if now - self._logged.get(generation, -LOG_EVERY) < LOG_EVERY:
            self._left_out[generation] = self._left_out.get(generation, 0) + 1
            return
        self._logged[generation] = now
        log.warning(
            "long garbage collection",
            generation=generation,
            pause_ms=round(pause * 1000, 1),
            collected=collected,
            left_out=self._left_out.pop(generation, 0),
        )


def watch() -> PauseWatch:
    """Time every collection of this process from now on (once per process)."""
    for callback in gc.callbacks:
        if isinstance(callback, PauseWatch):
            return callback
    watcher = PauseWatch()
    gc.callbacks.append(watcher)
    return watcher


def settle() -> None:
    """Start-up is over: collect once, freeze what is left, and collect young objects less
    often (the module's docstring says why)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
