"""`InMemoryMessageStore` and `InMemoryRoomStore`: the store seam without a database.

For unit tests of the services, where a database process would only slow the test down; they
follow the same docstrings as the MongoDB stores (and the same store tests run on both).
Nothing here survives the process.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from roomcast.shared.models import ChatMessage
from roomcast.shared.moderation import RoomModeration, RoomOwner, Sanction, SanctionKind

from .base import (
    MAX_DISTINCT_REACTIONS,
    UNREAD_CAP,
    Inserted,
    NameReservation,
    PrivateRoom,
    ReadState,
    ReadTail,
    RoomMember,
    StoreUnavailableError,
    TailEntry,
    deleted,
    edited,
    lifted,
    next_rev,
    not_found,
    owned,
    reacted,
    sanctioned,
)


@dataclass(slots=True)
class _Entry:
    """A stored message in its current state, and who wrote it (never on the wire)."""

    message: ChatMessage
    author: str | None


class InMemoryMessageStore:
    """A room's list position is its stored order (`seq` of the MongoDB store)."""

    def __init__(self) -> None:
        self._rooms: dict[str, list[_Entry]] = {}
        self._index: dict[tuple[str, str], int] = {}
        self._revs: dict[str, int] = {}  # room -> its largest rev
        self._markers: dict[tuple[str, str], int] = {}  # (room, reader) -> list position
        self.available = True

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> bool:
        return self.available

    def forget_counters(self) -> None:
        """Its counters are its data: nothing to read again."""

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailableError("the in-memory store is switched off")

    def _messages(self, room: str) -> list[ChatMessage]:
        return [entry.message for entry in self._rooms.get(room, [])]

    def _take_rev(self, room: str, proposed: int) -> int:
        rev = next_rev(proposed, self._revs.get(room, 0))
        self._revs[room] = rev
        return rev

    async def insert_many(
        self, messages: list[ChatMessage], authors: Sequence[str | None] | None = None
    ) -> list[ChatMessage]:
        return (await self.insert_new(messages, authors)).messages

    async def insert_new(
        self, messages: list[ChatMessage], authors: Sequence[str | None] | None = None
    ) -> Inserted:
        self._check()
        stored: list[ChatMessage] = []
        new: list[bool] = []
        for i, message in enumerate(messages):
            key = (message.room, message.id)
            if key in self._index:
                stored.append(self._rooms[message.room][self._index[key]].message)
                new.append(False)
                continue
            room = self._rooms.setdefault(message.room, [])
            fresh = message.model_copy(update={"rev": self._take_rev(message.room, message.rev)})
            self._index[key] = len(room)
            room.append(_Entry(fresh, authors[i] if authors is not None else None))
            stored.append(fresh)
            new.append(True)
        return Inserted(stored, new)

    async def get(self, room: str, message_id: str) -> ChatMessage | None:
        self._check()
        position = self._index.get((room, message_id))
        return None if position is None else self._rooms[room][position].message

    async def newest(self, room: str, limit: int) -> list[ChatMessage]:
        self._check()
        return self._messages(room)[-limit:] if limit > 0 else []

    async def after(self, room: str, message_id: str, limit: int) -> list[ChatMessage] | None:
        self._check()
        position = self._index.get((room, message_id))
        if position is None:
            return None
        return self._messages(room)[position + 1 : position + 1 + max(0, limit)]

    async def before(
        self, room: str, message_id: str | None, limit: int
    ) -> list[ChatMessage] | None:
        self._check()
        messages = self._messages(room)
        if message_id is None:
            return messages[-limit:] if limit > 0 else []
        position = self._index.get((room, message_id))
        if position is None:
            return None
        return messages[max(0, position - limit) : position]

    async def since_rev(self, room: str, rev: int, limit: int) -> list[ChatMessage]:
        self._check()
        changed = sorted((m for m in self._messages(room) if m.rev > rev), key=lambda m: m.rev)
        return changed[: max(0, limit)]

    def _change(
        self,
        room: str,
        message_id: str,
        proposed: int,
        judge: Callable[[_Entry], ChatMessage | None],
    ) -> ChatMessage:
        """Apply what `judge` makes of the stored entry; a None verdict changes nothing."""
        self._check()
        position = self._index.get((room, message_id))
        if position is None:
            raise not_found(room, message_id)
        entry = self._rooms[room][position]
        changed = judge(entry)
        if changed is None:
            return entry.message
        entry.message = changed.model_copy(update={"rev": self._take_rev(room, proposed)})
        return entry.message

    async def edit(
        self,
        room: str,
        message_id: str,
        *,
        author: str,
        username: str,
        body: str,
        at: int,
        rev: int,
    ) -> ChatMessage:
        return self._change(
            room,
            message_id,
            rev,
            lambda e: edited(
                e.message, e.author, author=author, username=username, body=body, at=at
            ),
        )

    async def delete(
        self,
        room: str,
        message_id: str,
        *,
        author: str,
        username: str,
        moderator: bool = False,
        rev: int,
    ) -> ChatMessage:
        return self._change(
            room,
            message_id,
            rev,
            lambda e: deleted(
                e.message, e.author, author=author, username=username, moderator=moderator
            ),
        )

    async def react(
        self,
        room: str,
        message_id: str,
        *,
        username: str,
        emoji: str,
        add: bool,
        rev: int,
        max_distinct: int = MAX_DISTINCT_REACTIONS,
    ) -> ChatMessage:
        return self._change(
            room,
            message_id,
            rev,
            lambda e: reacted(
                e.message, username=username, emoji=emoji, add=add, max_distinct=max_distinct
            ),
        )

    async def mark_read(self, room: str, reader: str, message_id: str) -> str:
        self._check()
        position = self._index.get((room, message_id))
        if position is None:
            raise not_found(room, message_id)
        key = (room, reader)
        marker = max(position, self._markers.get(key, -1))
        self._markers[key] = marker
        return self._rooms[room][marker].message.id

    async def read_state(self, room: str, reader: str, username: str | None) -> ReadState:
        self._check()
        marker = self._markers.get((room, reader))
        entries = self._rooms.get(room, [])
        start = 0 if marker is None else marker + 1
        unread = 0
        for entry in entries[start:]:
            message = entry.message
            if message.username != username and not message.deleted:
                unread += 1
                if unread == UNREAD_CAP:
                    break
        last_read = None if marker is None else entries[marker].message.id
        return ReadState(last_read, unread)

    async def read_tail(self, room: str, limit: int) -> ReadTail:
        """A message's list position is its seq."""
        self._check()
        entries = self._rooms.get(room, [])
        start = max(0, len(entries) - max(0, limit))
        tail = [
            TailEntry(seq, e.message.id, e.message.username, bool(e.message.deleted))
            for seq, e in enumerate(entries[start:], start)
        ]
        markers = {
            reader: (position, entries[position].message.id)
            for (marked_room, reader), position in self._markers.items()
            if marked_room == room
        }
        return ReadTail(markers, tail, start - 1 if start > 0 else None)


class InMemoryRoomStore:
    def __init__(self) -> None:
        self._rooms: dict[str, PrivateRoom] = {}
        self._names: dict[str, NameReservation] = {}
        self._moderation: dict[str, RoomModeration] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> bool:
        return True

    async def get_private(self, room: str) -> PrivateRoom | None:
        return self._rooms.get(room)

    async def make_private(self, room: str, members: tuple[RoomMember, RoomMember]) -> PrivateRoom:
        return self._rooms.setdefault(room, PrivateRoom(room, members))

    async def reserve_name(self, reservation: NameReservation) -> None:
        self._names[reservation.key] = reservation

    async def get_reservation(self, key: str, now: float) -> NameReservation | None:
        found = self._names.get(key)
        return found if found is not None and found.holds(now) else None

    async def reservations(self, now: float, limit: int) -> list[NameReservation]:
        held = (r for r in self._names.values() if r.holds(now))
        return list(itertools.islice(held, max(limit, 0)))

    async def purge_reservations(self, now: float) -> int:
        ended = [key for key, r in self._names.items() if not r.holds(now)]
        for key in ended:
            del self._names[key]
        return len(ended)

    async def get_moderation(self, room: str) -> RoomModeration:
        return self._moderation.get(room) or RoomModeration(room=room)

    def _moderate(self, room: str, changed: RoomModeration | None) -> RoomModeration:
        current = self._moderation.get(room) or RoomModeration(room=room)
        if changed is None:
            return current
        self._moderation[room] = changed.model_copy(update={"version": current.version + 1})
        return self._moderation[room]

    async def claim_owner(self, room: str, owner: RoomOwner) -> RoomModeration:
        return self._moderate(room, owned(await self.get_moderation(room), owner))

    async def add_sanction(
        self, room: str, kind: SanctionKind, sanction: Sanction, now: float
    ) -> RoomModeration:
        return self._moderate(
            room, sanctioned(await self.get_moderation(room), kind, sanction, now)
        )

    async def lift_sanction(self, room: str, kind: SanctionKind, key: str) -> RoomModeration:
        return self._moderate(room, lifted(await self.get_moderation(room), kind, key))
