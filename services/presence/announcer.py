"""Presence's room events (PROTOCOL.md 2.1): `userJoin` when a user goes from absent to present
in a room, `userLeave` when present to absent; never `activeUsers` (a joiner's snapshot is the
join reply, which the gateway sends it right after `msgHistory`).

Changes are coalesced per room in batches: a batch stays open for one tick, and at the end
each (room, user) in it that changed sends one event, or none when it flipped back (a user who
leaves and rejoins within a tick produces nothing). Batches are handled one after another, so
each room's events keep their order.

A join closes the open batch at once (a barrier): changes after the joiner's snapshot can then
never cancel out with changes before it (a leave before the snapshot and a rejoin after it
would, and the joiner would never learn of the rejoin). A batch of joins (`presence.joins`)
needs only two barriers, before its first join and after its last: between them only joins
happen, and a join never cancels another. Its joiners' snapshots include the joins judged
before theirs in the same batch, whose `userJoin` comes after; the gateway drops a change that
a joiner's snapshot already shows (`Member.go_live`, and for a short while after it).

One bus message per room (`room.<room>.presence`) carries the room's events of one
publication, each a client frame, one per line. A room publishes at once while it is quiet,
and at most `RATE` times a second once it has published `BURST` times in a row (a token
bucket per room): in a join storm each member's socket then gets a room's changes of ~100 ms
in one write, where it got one write per change (docs/performance.md, "Issue 11, third pass").
Every event is still published, in order; only its wait changes. A single `join` (from an
older gateway) waits until everything announced before its reply is published; a batch of
joins waits until its events are published or deferred by the room's pace (`settled`).

Publishing is best effort: an event that cannot be published is logged and dropped (the
gateways' heartbeats keep presence right; a client recovers its list by joining again).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from prometheus_client import Counter

from roomcast.shared import topics
from roomcast.shared.bus import Bus
from roomcast.shared.frames import encode_event
from roomcast.webhooks.presence import Flip, PresenceWebhooks

from .state import Changes

log = structlog.get_logger(__name__)

EVENTS = Counter(
    "roomcast_presence_events_total",
    "Presence room events, by event and outcome (published, coalesced, dropped)",
    ["event", "outcome"],
)

TICK_SECONDS = 0.01
RATE = 10.0  # a busy room's publications per second
BURST = 5  # publications in a row before a room is paced


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass(slots=True)
class _Net:
    """One user's presence in one room across a batch."""

    before: bool  # present when the batch began
    after: bool


@dataclass(slots=True, eq=False)
class _Batch:
    rooms: dict[str, dict[str, _Net]] = field(default_factory=dict)  # in first-change order
    opened: float = 0.0
    waiting: int = 0  # rooms whose events of this batch are not published yet
    settled: asyncio.Future[None] = field(default_factory=_future)  # published or deferred
    done: asyncio.Future[None] = field(default_factory=_future)  # and all before it published


@dataclass(slots=True)
class _Room:
    """A room's events staged and not yet published, and whose batches wait for them."""

    frames: list[str]
    waiters: list[_Batch]
    due: float


class _Bucket:
    """A room's publication budget: `BURST` at once, then `RATE` a second."""

    __slots__ = ("at", "tokens")

    def __init__(self, now: float) -> None:
        self.tokens = float(BURST)
        self.at = now

    def refill(self, now: float, rate: float) -> float:
        self.tokens = min(float(BURST), self.tokens + (now - self.at) * rate)
        self.at = now
        return self.tokens


class Announcer:
    def __init__(
        self,
        bus: Bus,
        tick: float = TICK_SECONDS,
        *,
        webhooks: PresenceWebhooks | None = None,
        rate: float = RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`webhooks` gets each batch's flips (room occupied/vacated, member joined/left:
        roomcast.webhooks.presence). `rate`: a busy room's publications per second (0: never
        paced)."""
        self._bus = bus
        self._webhooks = webhooks
        self._tick = tick
        self._rate = rate
        self._clock = clock
        self._open: _Batch | None = None
        self._queue: deque[_Batch] = deque()  # closed, not yet staged
        self._unfinished: deque[_Batch] = deque()  # staged, `done` not yet set
        self._last: _Batch | None = None  # the most recently closed batch
        self._rooms: dict[str, _Room] = {}  # staged events by room, not yet published
        self._buckets: dict[str, _Bucket] = {}  # rooms that published lately
        self._wake = asyncio.Event()
        self.on_round: Callable[[], None] = lambda: None  # a round went out (supervision)

    def announce(self, changes: Changes, *, barrier: bool = False) -> asyncio.Future[None] | None:
        """Queue the changes; with `barrier`, close the batch and return a future that resolves
        once everything announced so far is published (None when that is already so)."""
        for change in changes.presence:
            self._note(change.room, change.username, change.present)
        return self.barrier() if barrier else None

    def barrier(self) -> asyncio.Future[None] | None:
        """Close the open batch: changes from now on cannot cancel out those before. Returns a
        future that resolves once everything announced so far is published (None when that is
        already so)."""
        self._close()
        last = self._last
        return last.done if last is not None and not last.done.done() else None

    def settled(self) -> asyncio.Future[None] | None:
        """Close the open batch, and return a future that resolves once everything announced
        so far is published or waits only for its room's pace (None when that is already
        so): what a batch of joins waits for before its reply."""
        self._close()
        last = self._last
        return last.settled if last is not None and not last.settled.done() else None

    def published(self) -> asyncio.Future[None] | None:
        """A future that resolves once everything announced so far is published, without
        closing the open batch (None when that is already so)."""
        batch = self._open or self._last
        return batch.done if batch is not None and not batch.done.done() else None

    def pending(self) -> int:
        """Batches not yet published (the open one included)."""
        return len(self._queue) + len(self._unfinished) + (self._open is not None)

    async def run(self) -> None:
        """Publish, in order, for ever; supervised (a death is restarted, and what it had not
        published is published by the next run)."""
        while True:
            now = self._clock()
            if self._open is not None and now - self._open.opened >= self._tick:
                self._close()
            if self._queue:
                staged = []
                while self._queue:
                    batch = self._queue.popleft()
                    self._stage(batch, now)
                    staged.append(batch)
                await self._publish_due(now)
                for batch in staged:
                    if not batch.settled.done():
                        batch.settled.set_result(None)
                self._finish()
                self.on_round()
                continue
            due = min((room.due for room in self._rooms.values()), default=None)
            if due is not None and due <= now:
                await self._publish_due(now)
                self._finish()
                self.on_round()
                continue
            opened = self._open.opened + self._tick if self._open is not None else None
            wake = [t for t in (due, opened) if t is not None]
            self._wake.clear()
            if wake:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, min(wake) - now))
            else:
                await self._wake.wait()

    def fail_pending(self) -> None:
        """Release every waiter (the service is stopping): replies must not hang."""
        self._close()
        for batch in (*self._queue, *self._unfinished):
            for future in (batch.settled, batch.done):
                if not future.done():
                    future.set_result(None)
        self._queue.clear()
        self._unfinished.clear()
        self._rooms.clear()

    # internals ---------------------------------------------------------------------------
    def _note(self, room: str, username: str, present: bool) -> None:
        if self._open is None:
            self._open = _Batch(opened=self._clock())
            self._wake.set()
        users = self._open.rooms.setdefault(room, {})
        net = users.get(username)
        if net is None:
            users[username] = _Net(before=not present, after=present)
            return
        net.after = present

    def _close(self) -> None:
        batch, self._open = self._open, None
        if batch is None:
            return
        self._queue.append(batch)
        self._last = batch
        self._wake.set()

    def _stage(self, batch: _Batch, now: float) -> None:
        """A closed batch's events, each room's after what it has staged already."""
        flips: list[Flip] = []
        for room, users in batch.rooms.items():
            frames = []
            for username, net in users.items():
                event = "userJoin" if net.after else "userLeave"
                if net.before == net.after:
                    EVENTS.labels(event, "coalesced").inc()
                    continue
                flips.append(Flip(room, username, net.after))
                frames.append(encode_event(event, {"username": username, "room": room}, room=room))
            if not frames:
                continue
            staged = self._rooms.get(room)
            if staged is None:
                staged = self._rooms[room] = _Room([], [], self._due(room, now))
            staged.frames += frames
            staged.waiters.append(batch)
            batch.waiting += 1
        self._unfinished.append(batch)
        if self._webhooks is not None and flips:
            self._webhooks.changed(flips)

    def _due(self, room: str, now: float) -> float:
        """When a room's next publication may go: now, unless it spent its burst."""
        bucket = self._buckets.get(room)
        if bucket is None or self._rate <= 0:
            return now
        tokens = bucket.refill(now, self._rate)
        return now if tokens >= 1 else now + (1 - tokens) / self._rate

    async def _publish_due(self, now: float) -> None:
        """Publish every room whose turn has come, one message each, together."""
        due = [room for room, staged in self._rooms.items() if staged.due <= now]
        if not due:
            return
        rounds = []
        for room in due:
            staged = self._rooms.pop(room)
            self._spend(room, now)
            rounds.append((room, staged))
        try:
            await asyncio.gather(*(self._send(room, staged.frames) for room, staged in rounds))
        finally:  # sent or lost, they are out of the staging: their batches must not wait on
            for _, staged in rounds:
                for batch in staged.waiters:
                    batch.waiting -= 1
        if len(self._buckets) > 2 * max(len(self._rooms), 64):
            self._forget_full(now)

    def _spend(self, room: str, now: float) -> None:
        if self._rate <= 0:
            return
        bucket = self._buckets.get(room)
        if bucket is None:
            bucket = self._buckets[room] = _Bucket(now)
        bucket.refill(now, self._rate)
        bucket.tokens -= 1

    def _forget_full(self, now: float) -> None:
        """Rooms whose budget is whole again need no bucket (keeps the map bounded)."""
        for room in [r for r, b in self._buckets.items() if b.refill(now, self._rate) >= BURST]:
            del self._buckets[room]

    def _finish(self) -> None:
        """Batches whose events, and all before them, are published."""
        while self._unfinished and self._unfinished[0].waiting == 0:
            batch = self._unfinished.popleft()
            for future in (batch.settled, batch.done):
                if not future.done():
                    future.set_result(None)

    async def _send(self, room: str, frames: list[str]) -> None:
        body = "\n".join(frames).encode()
        try:
            await self._bus.publish(topics.room_event(room, topics.PRESENCE_CHANGES), body)
        except Exception as exc:  # ephemeral: one lost message must not stop the others
            for frame in frames:
                EVENTS.labels(_event_of(frame), "dropped").inc()
            log.warning(
                "presence events not published",
                room=room,
                events=len(frames),
                error=f"{type(exc).__name__}: {exc}",
            )
        else:
            for frame in frames:
                EVENTS.labels(_event_of(frame), "published").inc()


def _event_of(frame: str) -> str:
    return "userJoin" if frame.startswith('{"event":"userJoin"') else "userLeave"
