"""`IndexedStore`: history's `MessageStore`, answering `read_state` from its `ReadIndex` and
telling the index of every write that changes a read state (a new message, a delete, a marker).

Reads and changes go through it unchanged, so `reads` and `changes` need not know the index
exists; every write passes here, which is what keeps the index exact.
"""

from __future__ import annotations

from collections.abc import Sequence

from roomcast.shared.models import ChatMessage
from roomcast.shared.store.base import (
    MAX_DISTINCT_REACTIONS,
    Inserted,
    MessageStore,
    ReadState,
    ReadTail,
)

from .readindex import ReadIndex


class IndexedStore:
    def __init__(self, store: MessageStore, index: ReadIndex) -> None:
        self._store = store
        self.index = index

    async def open(self) -> None:
        await self._store.open()

    async def close(self) -> None:
        await self._store.close()

    async def ping(self) -> bool:
        return await self._store.ping()

    def forget_counters(self) -> None:
        self._store.forget_counters()

    async def insert_many(
        self, messages: list[ChatMessage], authors: Sequence[str | None] | None = None
    ) -> list[ChatMessage]:
        return (await self.insert_new(messages, authors)).messages

    async def insert_new(
        self, messages: list[ChatMessage], authors: Sequence[str | None] | None = None
    ) -> Inserted:
        with self.index.writing():
            inserted = await self._store.insert_new(messages, authors)
            self.index.stored(inserted)
        return inserted

    async def get(self, room: str, message_id: str) -> ChatMessage | None:
        return await self._store.get(room, message_id)

    async def newest(self, room: str, limit: int) -> list[ChatMessage]:
        return await self._store.newest(room, limit)

    async def after(self, room: str, message_id: str, limit: int) -> list[ChatMessage] | None:
        return await self._store.after(room, message_id, limit)

    async def before(
        self, room: str, message_id: str | None, limit: int
    ) -> list[ChatMessage] | None:
        return await self._store.before(room, message_id, limit)

    async def since_rev(self, room: str, rev: int, limit: int) -> list[ChatMessage]:
        return await self._store.since_rev(room, rev, limit)

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
        # no read state changes: the index need not know
        return await self._store.edit(
            room, message_id, author=author, username=username, body=body, at=at, rev=rev
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
        with self.index.writing():
            message = await self._store.delete(
                room, message_id, author=author, username=username, moderator=moderator, rev=rev
            )
            if message.deleted:
                self.index.deleted(room, message.id)
        return message

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
        return await self._store.react(
            room,
            message_id,
            username=username,
            emoji=emoji,
            add=add,
            rev=rev,
            max_distinct=max_distinct,
        )

    async def mark_read(self, room: str, reader: str, message_id: str) -> str:
        with self.index.writing():
            marker = await self._store.mark_read(room, reader, message_id)
            self.index.marked(room, reader, marker)
        return marker

    async def read_state(self, room: str, reader: str, username: str | None) -> ReadState:
        return await self.index.state(self._store, room, reader, username)

    async def read_tail(self, room: str, limit: int) -> ReadTail:
        return await self._store.read_tail(room, limit)
