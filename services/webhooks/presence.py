"""Presence's webhook events: room occupied and vacated, member joined and left.

Presence's announcer hands over, per published batch, each (room, user) that went from absent
to present or back (`Flip`s: the same facts as its `userJoin`/`userLeave`). `Occupancy` counts
the users present per room from them, so a room's first arrival is `room.occupied` (before its
`member.joined`) and its last departure `room.vacated` (after its `member.left`). Within a batch
a room is judged by its state before and after the whole batch: one user leaving while another
arrives in the same tick is no vacancy.

After a presence restart or failover, the state is rebuilt from gateway heartbeats and its
rooms and members are announced afresh: receivers should treat these events as state ("the
room is occupied"), not as increments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from .emitter import WebhookEmitter, WebhookOutbox
from .events import WebhookEvent, now_ms, room_event


class Flip(NamedTuple):
    room: str
    username: str
    present: bool


class Occupancy:
    """Users present per room, as the flips say; only occupied rooms are held."""

    def __init__(self, clock: Callable[[], int] = now_ms) -> None:
        self._users: dict[str, int] = {}
        self._clock = clock

    def count(self, room: str) -> int:
        return self._users.get(room, 0)

    def events(self, flips: Iterable[Flip]) -> list[WebhookEvent]:
        at = self._clock()
        by_room: dict[str, list[Flip]] = {}
        for flip in flips:
            by_room.setdefault(flip.room, []).append(flip)
        out: list[WebhookEvent] = []
        for room, changes in by_room.items():
            before = self.count(room)
            after = max(0, before + sum(1 if f.present else -1 for f in changes))
            if after:
                self._users[room] = after
            else:
                self._users.pop(room, None)
            if not before and after:
                out.append(room_event("room.occupied", room, at))
            out += [
                room_event("member.joined" if f.present else "member.left", room, at, f.username)
                for f in changes
            ]
            if before and not after:
                out.append(room_event("room.vacated", room, at))
        return out


class PresenceWebhooks:
    """What presence needs: flips in, events queued for the bus by `run` (supervised)."""

    def __init__(self, emitter: WebhookEmitter, occupancy: Occupancy | None = None) -> None:
        self.occupancy = occupancy or Occupancy()
        self.outbox = WebhookOutbox(emitter)

    def changed(self, flips: Iterable[Flip]) -> None:
        self.outbox.put(self.occupancy.events(flips))

    async def run(self) -> None:
        await self.outbox.run()
