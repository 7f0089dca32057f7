"""Presence's room events (PROTOCOL.md 2.1): `userJoin` when a user goes from absent to present
in a room, `userLeave` when present to absent; never `activeUsers` (a joiner's snapshot is the
join reply, which the gateway sends it right after `msgHistory`).

Changes are coalesced per room in batches: a batch stays open for one tick, and at the end
each (room, user) in it that changed sends one event, or none when it flipped back (a user who
leaves and rejoins within a tick produces nothing). Batches are published one after another,
so each room's events keep their order.

A join closes the open batch at once (a barrier) and its reply waits until that batch is
published: the joiner's snapshot then reflects exactly what was announced before it, and every
later change reaches its gateway (which bound the room before asking) after the snapshot.
Without the barrier, a leave before the snapshot and a rejoin after it would cancel out and
the joiner would never learn of the rejoin. A batch of joins (`presence.joins`) needs only two
barriers, before its first join and after its last: between them only joins happen, and a
join never cancels another. Its joiners' snapshots then include the joins judged before
theirs in the same batch, whose `userJoin` is published after; the gateway drops such a held
event as already shown (`Member.go_live`).

A batch's events are published together, their confirms awaited at once (each (room, user)
has at most one event in a batch, so their order within it does not matter).

Publishing is best effort: an event that cannot be published is logged and dropped (the
gateways' heartbeats keep presence right; a client recovers its list by joining again).
"""

from __future__ import annotations

import asyncio
import contextlib
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


@dataclass(slots=True)
class _Net:
    """One user's presence in one room across a batch."""

    before: bool  # present when the batch began
    after: bool
    origin: str  # the connection of the last join (skips its own userJoin)


@dataclass(slots=True)
class _Batch:
    rooms: dict[str, dict[str, _Net]] = field(default_factory=dict)  # in first-change order
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Announcer:
    def __init__(
        self, bus: Bus, tick: float = TICK_SECONDS, *, webhooks: PresenceWebhooks | None = None
    ) -> None:
        """`webhooks` gets each published batch's flips (room occupied/vacated, member
        joined/left: roomcast.webhooks.presence)."""
        self._bus = bus
        self._webhooks = webhooks
        self._tick = tick
        self._open: _Batch | None = None
        self._queue: deque[_Batch] = deque()  # closed, not yet published
        self._last: _Batch | None = None  # the most recently closed batch
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self.on_round: Callable[[], None] = lambda: None  # a batch went out (supervision)

    def announce(self, changes: Changes, *, barrier: bool = False) -> asyncio.Future[None] | None:
        """Queue the changes; with `barrier`, close the batch and return a future that resolves
        once everything announced so far is published (None when that is already so)."""
        for change in changes.presence:
            self._note(change.room, change.username, change.present, change.conn)
        return self.barrier() if barrier else None

    def barrier(self) -> asyncio.Future[None] | None:
        """Close the open batch: changes from now on cannot cancel out those before. Returns a
        future that resolves once everything announced so far is published (None when that is
        already so)."""
        self._close()
        last = self._last
        return last.done if last is not None and not last.done.done() else None

    def published(self) -> asyncio.Future[None] | None:
        """A future that resolves once everything announced so far is published, without
        closing the open batch (None when that is already so)."""
        batch = self._open or self._last
        return batch.done if batch is not None and not batch.done.done() else None

    def pending(self) -> int:
        """Batches not yet published (the open one included)."""
        return len(self._queue) + (self._open is not None)

    async def run(self) -> None:
        """Publish batches in order, for ever; supervised (a death is restarted, and the
        batches it had not published are published by the next run)."""
        while True:
            if not self._queue:
                waiting = self._open
                if waiting is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                self._closed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), self._tick)
                if self._open is waiting:
                    self._close()
                continue
            batch = self._queue[0]
            try:
                await self._publish(batch)
            finally:
                if self._queue and self._queue[0] is batch:
                    self._queue.popleft()
                if not batch.done.done():
                    batch.done.set_result(None)
            self.on_round()

    def fail_pending(self) -> None:
        """Release every waiter (the service is stopping): replies must not hang."""
        self._close()
        for batch in self._queue:
            if not batch.done.done():
                batch.done.set_result(None)
        self._queue.clear()

    # internals ---------------------------------------------------------------------------
    def _note(self, room: str, username: str, present: bool, origin: str) -> None:
        if self._open is None:
            self._open = _Batch()
            self._wake.set()
        users = self._open.rooms.setdefault(room, {})
        net = users.get(username)
        if net is None:
            users[username] = _Net(before=not present, after=present, origin=origin)
            return
        net.after = present
        if present:
            net.origin = origin

    def _close(self) -> None:
        batch, self._open = self._open, None
        if batch is None:
            return
        self._queue.append(batch)
        self._last = batch
        self._closed.set()
        self._wake.set()

    async def _publish(self, batch: _Batch) -> None:
        """Publish a batch's events all at once (their confirms in flight together): within a
        batch each (room, user) has at most one event, so their order does not matter; batches
        still go one after another."""
        flips: list[Flip] = []
        sends = []
        for room, users in batch.rooms.items():
            for username, net in users.items():
                event = "userJoin" if net.after else "userLeave"
                if net.before == net.after:
                    EVENTS.labels(event, "coalesced").inc()
                    continue
                flips.append(Flip(room, username, net.after))
                origin = net.origin if net.after else ""
                sends.append(self._send(room, username, event, origin))
        if sends:
            await asyncio.gather(*sends)
        if self._webhooks is not None and flips:
            self._webhooks.changed(flips)

    async def _send(self, room: str, username: str, event: str, origin: str) -> None:
        frame = encode_event(event, {"username": username, "room": room}, room=room)
        headers = {topics.Header.ORIGIN: origin} if origin else {}
        try:
            await self._bus.publish(topics.room_event(room, event), frame.encode(), headers=headers)
        except Exception as exc:  # ephemeral: one lost event must not stop the others
            EVENTS.labels(event, "dropped").inc()
            log.warning(
                "presence event not published",
                presence_event=event,
                room=room,
                error=f"{type(exc).__name__}: {exc}",
            )
        else:
            EVENTS.labels(event, "published").inc()
