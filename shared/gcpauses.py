"""How long Python's garbage collector stops each service, as a metric and, when long, a log line.

Why: a full (generation 2) collection walks every live container object, and a gateway holding
thousands of sockets has millions of them. In the join storm (docs/performance.md, "Issue 11,
second pass") full collections took 93-178 ms per gateway, and every join the process held
waited that long; nothing in the process's own metrics showed it. `roomcast_gc_pause_seconds`
shows each collection's pause by generation; a pause of `SLOW` or more is logged (at most one
line per generation per 10 s, counting those left out).
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
