"""The one writer's counters, kept in memory between reservations in the store.

History is the one writer of messages (its single active consumer), so it need not ask the
database for every `seq` and every room's rev: it reserves ahead and hands numbers out from
memory. Reserving ahead keeps the store's counters at or above every number handed out, so a
writer that takes over (or this one after `forget`) starts above them: numbers are never
reused and never go back; what a writer reserved and did not use is a gap, which `seq` and
revs allow (PROTOCOL.md 2.3 asks only that revs grow).

No I/O here: `MongoMessageStore` does the reads and writes these ask for.
"""

from __future__ import annotations

from collections import OrderedDict

from .base import next_rev

# Seq numbers reserved per round trip: a block lasts some seconds of a busy deployment.
SEQ_BLOCK = 1000
# Revs a room's stored counter is raised ahead of its largest rev handed out: RevClock
# proposes milliseconds x 1000, so this is about ten seconds of a busy room per raise.
REV_HEADROOM = 10_000_000
# Rooms whose revs are held (room names come from clients: bounded). One let go is read again.
MAX_ROOMS = 10_000


class SeqBlock:
    """Seq numbers of one reserved block, handed out in order."""

    def __init__(self, size: int = SEQ_BLOCK) -> None:
        self.size = size
        self._next = 1
        self._last = 0  # nothing reserved yet

    def take(self, count: int) -> int | None:
        """The first of `count` numbers in a row from the block, None when it has fewer left
        (the rest is then dropped: a gap)."""
        if self._last - self._next + 1 < count:
            return None
        first = self._next
        self._next += count
        return first

    def wanted(self, count: int) -> int:
        """How many to reserve when `count` are needed now."""
        return max(count, self.size)

    def reserved(self, last: int, size: int, count: int) -> int:
        """The store reserved `size` numbers ending at `last`: the first of `count` of them,
        the rest kept for later calls (unless a later block is kept already)."""
        first = last - size + 1
        if last > self._last:
            self._next, self._last = first + count, last
        return first


class RoomRevs:
    """Per room: the largest rev handed out, and how far the store's counter has been raised.

    A rev is handed out only for a room whose stored counter was read (`unknown` says which
    must be), and a write may use revs only once `to_raise` is empty (raised in the store)."""

    def __init__(self, headroom: int = REV_HEADROOM, max_rooms: int = MAX_ROOMS) -> None:
        self._headroom = headroom
        self._max_rooms = max_rooms
        # room -> [largest rev handed out, stored counter known to be at least this]
        self._rooms: OrderedDict[str, list[int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rooms)

    def unknown(self, rooms: list[str]) -> list[str]:
        """The rooms, of `rooms`, whose stored counter must be read first."""
        return [room for room in rooms if room not in self._rooms]

    def loaded(self, room: str, stored: int) -> None:
        """The room's stored counter, as read: every rev of the room so far is at most this."""
        if room not in self._rooms:
            self._rooms[room] = [stored, stored]
            while len(self._rooms) > self._max_rooms:
                self._rooms.popitem(last=False)

    def take(self, room: str, proposed: int) -> int:
        """The rev of the room's next change: the proposal, raised above every rev before."""
        counters = self._rooms[room]
        self._rooms.move_to_end(room)
        counters[0] = next_rev(proposed, counters[0])
        return counters[0]

    def to_raise(self, rooms: list[str]) -> dict[str, int]:
        """Room -> the value its stored counter must be raised to (with `$max`) before the revs
        taken are written: those whose reservation the revs handed out have passed."""
        return {
            room: counters[0] + self._headroom
            for room in dict.fromkeys(rooms)
            if (counters := self._rooms.get(room)) is not None and counters[0] > counters[1]
        }

    def raised(self, tops: dict[str, int]) -> None:
        """The stored counters are now at least these."""
        for room, top in tops.items():
            counters = self._rooms.get(room)
            if counters is not None:
                counters[1] = max(counters[1], top)
