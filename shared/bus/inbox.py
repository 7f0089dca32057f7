"""`Inbox`: the bounded queue between a subscription's deliveries and its handler, for both buses.

Why it exists: deliveries arrive as fast as the broker pushes them, and the handler may be slower.
Unbounded, that difference grows the process until it dies; bounded, the excess is dropped, which
a broadcast subscription may do (it is at-most-once), provided its owner learns of it.

Guarantees:
- `put` never blocks and never raises. Past `limit` waiting messages it drops the delivery and
  counts it (`roomcast_bus_inbox_dropped_total`); one warning per overflow episode, not per drop.
- One loop task hands the messages to the handler, in arrival order. A handler exception is logged
  and the message dropped. The loop ends only by `close()`: if it ends in any other way (an
  escaping `BaseException`, a cancellation from outside) that is logged, counted in
  `roomcast_bus_task_deaths_total{task="subscription"}`, and the loop restarted.
- `lost()` marks where deliveries may begin to be lost: `on_loss` is called synchronously once
  the handler has had every delivery accepted before the mark, and before it gets the next one.
  A full inbox marks its first drop of an episode itself.
- `gap()` says deliveries may have been lost. `on_gap` then runs as a task of its own, after the
  gap was detected and after every mark made so far had its `on_loss` (a gap reported without a
  mark is marked where it is reported); an exception from it is logged. Calls never overlap: a
  gap reported while `on_gap` runs makes exactly one more call after it. An overflow episode
  reports its gap once the inbox is back to half its limit (room again, with margin, so a flood
  does not make a storm of calls); the messages still waiting are delivered too, possibly while
  `on_gap` runs.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque

import structlog
from prometheus_client import Counter, Gauge

from .base import GapHandler, Handler, LossHandler, Message

log = structlog.get_logger(__name__)

# 100k deliveries of about 1 KB each: some 100 MB held at most per subscription, and at the
# gateway's fan-out rates several seconds of a stalled handler before anything is dropped.
DEFAULT_INBOX_LIMIT = 100_000

DROPPED = Counter(
    "roomcast_bus_inbox_dropped_total",
    "Broadcast deliveries dropped because the subscription's inbox was full",
    ["subscription"],
)
OVERFLOWS = Counter(
    "roomcast_bus_inbox_overflows_total",
    "Overflow episodes of a subscription's inbox (each ends with an on_gap call)",
    ["subscription"],
)
DEPTH = Gauge(
    "roomcast_bus_inbox_depth",
    "Deliveries waiting in subscription inboxes",
    ["subscription"],
)
GAPS = Counter(
    "roomcast_bus_gaps_total",
    "Times a subscription was told that deliveries may have been lost",
    ["subscription", "reason"],
)
TASK_DEATHS = Counter(
    "roomcast_bus_task_deaths_total",
    "Bus tasks that ended other than by close() and were restarted",
    ["task"],
)

# The depth gauge is computed when scraped, so the delivery path pays nothing for it.
_live: dict[str, weakref.WeakSet[Inbox]] = {}


def _track(inbox: Inbox) -> None:
    label = inbox.label
    if label not in _live:
        _live[label] = weakref.WeakSet()
        members = _live[label]
        DEPTH.labels(label).set_function(lambda: float(sum(i.depth for i in members)))
    _live[label].add(inbox)


class Inbox:
    """Bounded FIFO plus the supervised task that feeds `handler` (see the module docstring)."""

    def __init__(
        self,
        handler: Handler,
        *,
        name: str,
        label: str = "",
        limit: int = DEFAULT_INBOX_LIMIT,
        on_gap: GapHandler | None = None,
        on_loss: LossHandler | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"inbox limit must be at least 1, not {limit}")
        self.name = name
        self.label = label or "unnamed"
        self.limit = limit
        self._handler = handler
        self._on_gap = on_gap
        self._on_loss = on_loss
        # positions in the stream of accepted deliveries: a mark at n falls between the n-th
        # delivery and the next; `_handed` counts deliveries whose handler has returned
        self._accepted = 0
        self._handed = 0
        self._marks: deque[int] = deque()
        self._marked = asyncio.Event()  # every mark made so far had its on_loss
        self._marked.set()
        self._unmarked_gap = True  # no mark since the last gap was reported
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=limit)
        self._low_water = limit // 2
        self._overflowing = False
        self._dropped_in_episode = 0
        self._task: asyncio.Task[None] | None = None
        self._gap_task: asyncio.Task[None] | None = None
        self._gap_again = False
        self._closed = False
        self._dropped = DROPPED.labels(self.label)
        _track(self)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        """Start the handler loop (in the running event loop)."""
        if self._task is None and not self._closed:
            self._spawn()

    def put(self, message: Message) -> None:
        """Queue a delivery, or drop it when the inbox is full."""
        if self._closed:
            return
        try:
            self._queue.put_nowait(message)
            self._accepted += 1
        except asyncio.QueueFull:
            self._dropped.inc()
            self._dropped_in_episode += 1
            if not self._overflowing:
                self._overflowing = True
                self.lost()
                OVERFLOWS.labels(self.label).inc()
                log.warning(
                    "subscription inbox full; dropping deliveries",
                    subscription=self.name,
                    limit=self.limit,
                )

    def lost(self) -> None:
        """Deliveries may be lost from here on: `on_loss` once the handler had everything
        accepted so far."""
        if self._closed:
            return
        self._unmarked_gap = False
        self._marks.append(self._accepted)
        self._marked.clear()
        self._fire_marks()

    def _fire_marks(self) -> None:
        """Call `on_loss` for every mark the handler has reached; only between deliveries."""
        while self._marks and self._marks[0] <= self._handed:
            self._marks.popleft()
            if self._on_loss is not None:
                try:
                    self._on_loss()
                except Exception:
                    log.exception("on_loss failed", subscription=self.name)
        if not self._marks:
            self._marked.set()

    def gap(self, reason: str) -> None:
        """Deliveries may have been lost: call `on_gap` (never two calls at once)."""
        if self._closed:
            return
        if self._unmarked_gap:
            self.lost()
        self._unmarked_gap = True
        GAPS.labels(self.label, reason).inc()
        log.info("subscription gap", subscription=self.name, reason=reason)
        if self._on_gap is None:
            return
        if self._gap_task is not None:
            self._gap_again = True
            return
        self._gap_task = asyncio.get_running_loop().create_task(
            self._call_gap(self._on_gap), name=f"bus-gap-{self.name}"
        )

    async def _call_gap(self, on_gap: GapHandler) -> None:
        try:
            while True:
                self._gap_again = False
                await self._marked.wait()
                try:
                    await on_gap()
                except Exception:
                    log.exception("on_gap failed", subscription=self.name)
                if not self._gap_again or self._closed:
                    return
        finally:
            self._gap_task = None

    def _spawn(self) -> None:
        task = asyncio.get_running_loop().create_task(self._run(), name=f"bus-sub-{self.name}")
        task.add_done_callback(self._on_task_done)
        self._task = task

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if self._closed or task is not self._task:
            return
        error = None if task.cancelled() else task.exception()
        TASK_DEATHS.labels("subscription").inc()
        log.error(
            "subscription task ended; restarting it",
            subscription=self.name,
            cause="cancelled" if error is None else repr(error),
            exc_info=error,
        )
        self._spawn()

    async def _run(self) -> None:
        queue = self._queue
        while not self._closed:
            message = await queue.get()
            if self._overflowing and queue.qsize() <= self._low_water:
                self._end_overflow()
            try:
                await self._handler(message)
            except Exception:
                # At-most-once: a failed broadcast delivery is dropped.
                log.exception("subscription handler failed", subscription=self.name)
            finally:
                self._handed += 1
                self._fire_marks()

    def _end_overflow(self) -> None:
        self._overflowing = False
        log.warning(
            "subscription inbox has room again",
            subscription=self.name,
            dropped=self._dropped_in_episode,
        )
        self._dropped_in_episode = 0
        self.gap("overflow")

    async def close(self) -> None:
        """Stop the loop and any running `on_gap`; what is still queued is dropped."""
        self._closed = True
        _live.get(self.label, weakref.WeakSet()).discard(self)
        current = asyncio.current_task()  # close() may be called by the handler or by on_gap
        tasks = [t for t in (self._task, self._gap_task) if t is not None and t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
