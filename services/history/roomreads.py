"""`RoomReads`: one room's read markers and newest messages, enough to answer its readers'
`lastRead`/`unread` (PROTOCOL.md 2.3) from memory, exactly as the store would.

It is loaded from the store's `ReadTail` and then kept by history's own writes (history is the
one writer of messages and markers): a new message is appended, a delete flags its entry, a
`markRead` moves a marker. It holds at most about `limit` messages: the oldest are let go, and
the `floor` (the newest message no longer held) rises. A reader whose marker is at or above the
floor has every message after it here; one below it (or without a marker, in a room with older
messages) is answered when the messages held already reach `UNREAD_CAP`, else not (None: the
caller asks the store).

Seqs are the store's for what was loaded; a message appended later gets the last one plus one,
since only their order is compared.
"""

from __future__ import annotations

import sys
from bisect import bisect_right
from typing import Final

from roomcast.shared.store.base import UNREAD_CAP, ReadState, ReadTail

# A reader whose marker moved below the messages held, without a way to tell which of two such
# markers is the later: the store answers for it.
UNKNOWN: Final = (-1, "")
Marker = tuple[int, str]


class RoomReads:
    __slots__ = ("_deleted", "_ids", "_limit", "_markers", "_seqs", "_users", "floor")

    def __init__(self, tail: ReadTail, limit: int) -> None:
        self._limit = limit
        self._seqs = [e.seq for e in tail.messages]
        self._users = [sys.intern(e.username) for e in tail.messages]  # one string a name
        self._deleted = [e.deleted for e in tail.messages]
        self._ids = {e.id: e.seq for e in tail.messages}
        self._markers: dict[str, Marker] = dict(tail.markers)
        self.floor = tail.floor

    def __len__(self) -> int:
        return len(self._seqs)

    def holds(self, message_id: str) -> bool:
        return message_id in self._ids

    @property
    def whole(self) -> bool:
        """Whether every message of the room is held."""
        return self.floor is None

    def state(self, reader: str, username: str | None) -> ReadState | None:
        """The reader's read state, or None when what is held cannot tell it."""
        marker = self._markers.get(reader)
        if marker is UNKNOWN:
            return None
        if marker is None:
            start, last_read, covered = 0, None, self.floor is None
        else:
            seq, last_read = marker
            start = bisect_right(self._seqs, seq)
            covered = self.floor is None or seq >= self.floor
        unread = 0
        users, deleted = self._users, self._deleted
        for i in range(start, len(users)):
            if not deleted[i] and users[i] != username:
                unread += 1
                if unread == UNREAD_CAP:
                    return ReadState(last_read, UNREAD_CAP)
        return ReadState(last_read, unread) if covered else None

    def add(self, message_id: str, username: str, deleted: bool) -> None:
        """A message the store has just stored (never a repeat)."""
        last = self._seqs[-1] if self._seqs else (self.floor if self.floor is not None else -1)
        self._seqs.append(last + 1)
        self._users.append(sys.intern(username))
        self._deleted.append(deleted)
        self._ids[message_id] = last + 1
        if len(self._seqs) > self._limit + max(1, self._limit // 4):
            self._trim()

    def _trim(self) -> None:
        """Let the oldest go, down to `limit` (in steps, so that trimming stays rare)."""
        cut = len(self._seqs) - self._limit
        self.floor = self._seqs[cut - 1]
        for message_id in [m for m, seq in self._ids.items() if seq <= self.floor]:
            del self._ids[message_id]
        del self._seqs[:cut], self._users[:cut], self._deleted[:cut]

    def deleted(self, message_id: str) -> None:
        """The message is a tombstone now (one not held counts only below the floor)."""
        seq = self._ids.get(message_id)
        if seq is not None:
            self._deleted[bisect_right(self._seqs, seq) - 1] = True

    def marked(self, reader: str, marker_id: str) -> None:
        """The store says the reader's marker is at `marker_id` now. Concurrent `markRead`s
        finish in any order, and a marker never moves back, so the later one held wins."""
        old = self._markers.get(reader)
        seq = self._ids.get(marker_id)
        if seq is not None:
            if old is None or old[0] < seq:
                self._markers[reader] = (seq, marker_id)
            return
        # below the messages held (the store refuses an id the room does not have)
        held = old is not None and self.floor is not None and old[0] > self.floor
        if old is not None and (old[1] == marker_id or held):
            return  # the same, or a later one that is held
        self._markers[reader] = UNKNOWN
