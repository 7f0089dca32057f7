"""The storage seam: what history and presence need from a database.

`MongoMessageStore` and `MongoRoomStore` (pymongo's asyncio API) implement it; only
`roomcast.shared.store.mongo` imports pymongo. Store failures surface as `StoreUnavailableError`
so consumers can requeue instead of losing a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from roomcast.shared.models import ChatMessage


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailableError(StoreError):
    """The database did not answer or refused the operation."""


class MessageStore(Protocol):
    """Messages of every room, in the order they were stored, unique on (room, id)."""

    async def open(self) -> None:
        """Connect and create indexes; idempotent."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """Whether the database answers now (for /readyz)."""

    async def insert_many(self, messages: list[ChatMessage]) -> list[ChatMessage]:
        """Store in list order, skipping any whose (room, id) is stored already.

        Returns, for each input in order, the message as stored: the earlier one for a repeat.
        """

    async def get(self, room: str, message_id: str) -> ChatMessage | None: ...

    async def newest(self, room: str, limit: int) -> list[ChatMessage]:
        """The newest `limit` messages of the room, oldest first."""

    async def after(self, room: str, message_id: str, limit: int) -> list[ChatMessage] | None:
        """Up to `limit` messages stored after `message_id`, oldest first; None if it is unknown."""

    async def before(
        self, room: str, message_id: str | None, limit: int
    ) -> list[ChatMessage] | None:
        """Up to `limit` messages stored before `message_id` (or the newest when None), oldest
        first; None if `message_id` is unknown."""


@dataclass(frozen=True, slots=True)
class RoomMember:
    username: str
    session_hash: str


@dataclass(frozen=True, slots=True)
class PrivateRoom:
    room: str
    members: tuple[RoomMember, RoomMember]

    def admits(self, username: str, session_hash: str | None) -> bool:
        return any(m.username == username and m.session_hash == session_hash for m in self.members)

    def usernames(self) -> set[str]:
        return {m.username for m in self.members}


class RoomStore(Protocol):
    """Private rooms and their two members; they outlive every process."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    async def get_private(self, room: str) -> PrivateRoom | None: ...

    async def make_private(self, room: str, members: tuple[RoomMember, RoomMember]) -> PrivateRoom:
        """Make the room private to the pair unless it already is private: returns what is stored
        (the existing room when another pair owns it, so the caller can refuse)."""
