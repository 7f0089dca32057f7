"""`InMemoryMessageStore` and `InMemoryRoomStore`: the store seam without a database.

For unit tests of the services, where a database process would only slow the test down; they
follow the same docstrings as the MongoDB stores (and the same store tests run on both).
Nothing here survives the process.
"""

from __future__ import annotations

from roomcast.shared.models import ChatMessage

from .base import PrivateRoom, RoomMember, StoreUnavailableError


class InMemoryMessageStore:
    def __init__(self) -> None:
        self._rooms: dict[str, list[ChatMessage]] = {}
        self._index: dict[tuple[str, str], int] = {}
        self.available = True

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> bool:
        return self.available

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailableError("the in-memory store is switched off")

    async def insert_many(self, messages: list[ChatMessage]) -> list[ChatMessage]:
        self._check()
        stored = []
        for message in messages:
            key = (message.room, message.id)
            if key in self._index:
                stored.append(self._rooms[message.room][self._index[key]])
                continue
            room = self._rooms.setdefault(message.room, [])
            self._index[key] = len(room)
            room.append(message)
            stored.append(message)
        return stored

    async def get(self, room: str, message_id: str) -> ChatMessage | None:
        self._check()
        position = self._index.get((room, message_id))
        return None if position is None else self._rooms[room][position]

    async def newest(self, room: str, limit: int) -> list[ChatMessage]:
        self._check()
        return self._rooms.get(room, [])[-limit:]

    async def after(self, room: str, message_id: str, limit: int) -> list[ChatMessage] | None:
        self._check()
        position = self._index.get((room, message_id))
        if position is None:
            return None
        return self._rooms[room][position + 1 : position + 1 + limit]

    async def before(
        self, room: str, message_id: str | None, limit: int
    ) -> list[ChatMessage] | None:
        self._check()
        messages = self._rooms.get(room, [])
        if message_id is None:
            return messages[-limit:]
        position = self._index.get((room, message_id))
        if position is None:
            return None
        return messages[max(0, position - limit) : position]


class InMemoryRoomStore:
    def __init__(self) -> None:
        self._rooms: dict[str, PrivateRoom] = {}

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
