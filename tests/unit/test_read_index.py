"""History's read index (services/history/readindex.py, roomreads.py, indexedstore.py): read
states answered from memory, exactly as the store would answer them.

Every write goes through `IndexedStore` over an `InMemoryMessageStore`, and every answer is
compared with the store's own `read_state` (the oracle); store calls are counted to show
which answers came from memory.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from roomcast.history.indexedstore import IndexedStore
from roomcast.history.readindex import ReadIndex
from roomcast.shared.models import ChatMessage
from roomcast.shared.store.base import UNREAD_CAP, Inserted, ReadState, StoreUnavailableError
from roomcast.shared.store.memory import InMemoryMessageStore

pytestmark = pytest.mark.unit

ROOM = "lobby"
ANN, BOB, CAT = "hash-ann", "hash-bob", "hash-cat"
USERS = {ANN: "ann", BOB: "bob", CAT: "cat"}


class CountingStore(InMemoryMessageStore):
    """The in-memory store, counting the reads a read state may cost; `gate` and `gate_after`,
    when given, hold `read_tail` until they are set, before or after it reads (a load in
    flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.gate: asyncio.Event | None = None
        self.gate_after: asyncio.Event | None = None
        self.taken = asyncio.Event()  # a snapshot was read

    async def read_state(self, room: str, reader: str, username: str | None) -> ReadState:
        self.calls["read_state"] += 1
        return await super().read_state(room, reader, username)

    async def read_tail(self, room: str, limit: int) -> Any:
        self.calls["read_tail"] += 1
        if self.gate is not None:
            await self.gate.wait()
        tail = await super().read_tail(room, limit)
        self.taken.set()
        if self.gate_after is not None:
            await self.gate_after.wait()
        return tail

    async def truth(self, room: str, reader: str) -> ReadState:
        """What the store says, uncounted."""
        return await super().read_state(room, reader, USERS.get(reader))


def msg(n: int, username: str = "bob", room: str = ROOM) -> ChatMessage:
    return ChatMessage(id=f"m{n:05d}", username=username, body=f"b{n}", time=n, room=room)


def author_of(username: str) -> str:
    return f"hash-{username}"


async def post(store: IndexedStore, *ns: int, username: str = "bob", room: str = ROOM) -> None:
    messages = [msg(n, username, room) for n in ns]
    await store.insert_many(messages, [author_of(username)] * len(messages))


def indexed(max_rooms: int = 16, tail: int = 50) -> tuple[CountingStore, IndexedStore]:
    inner = CountingStore()
    return inner, IndexedStore(inner, ReadIndex(max_rooms=max_rooms, tail=tail))


async def state(store: IndexedStore, reader: str, room: str = ROOM) -> ReadState:
    return await store.read_state(room, reader, USERS.get(reader))


async def test_own_and_deleted_messages_are_not_unread() -> None:
    inner, store = indexed()
    await post(store, 1, 2, username="bob")
    assert await state(store, ANN) == ReadState(None, 2)  # loads the room
    await post(store, 3, 4, username="ann")
    await post(store, 5, username="bob")
    assert await state(store, ANN) == ReadState(None, 3)  # ann's own are not unread
    assert await state(store, BOB) == ReadState(None, 2)
    assert await state(store, CAT) == ReadState(None, 5)
    await store.delete(ROOM, "m00002", author=BOB, username="bob", rev=0)
    await store.delete(ROOM, "m00003", author=ANN, username="ann", rev=0)
    assert await state(store, ANN) == ReadState(None, 2)
    assert await state(store, CAT) == ReadState(None, 3)
    assert inner.calls == {"read_tail": 1}  # everything after the load from memory
    for reader in (ANN, BOB, CAT):
        assert await state(store, reader) == await inner.truth(ROOM, reader)


async def test_markers_move_forward_only() -> None:
    inner, store = indexed()
    await post(store, 1, 2, 3, 4)
    assert await state(store, ANN) == ReadState(None, 4)
    assert await store.mark_read(ROOM, ANN, "m00002") == "m00002"
    assert await state(store, ANN) == ReadState("m00002", 2)
    assert await store.mark_read(ROOM, ANN, "m00001") == "m00002"  # never back
    assert await state(store, ANN) == ReadState("m00002", 2)
    await store.mark_read(ROOM, ANN, "m00004")
    await post(store, 5)
    assert await state(store, ANN) == ReadState("m00004", 1)
    assert await state(store, CAT) == ReadState(None, 5)  # markers are per reader
    assert inner.calls == {"read_tail": 1}


async def test_markers_stored_before_the_load_are_loaded() -> None:
    inner = CountingStore()
    for n in range(1, 5):
        await inner.insert_many([msg(n)], [BOB])
    await inner.mark_read(ROOM, ANN, "m00003")
    store = IndexedStore(inner, ReadIndex())
    assert await state(store, ANN) == ReadState("m00003", 1)
    assert inner.calls == {"read_tail": 1}


async def test_marks_finishing_out_of_order_keep_the_later() -> None:
    _, store = indexed()
    await post(store, 1, 2, 3)
    await state(store, ANN)
    # what two concurrent markReads may report, the later first
    store.index.marked(ROOM, ANN, "m00003")
    store.index.marked(ROOM, ANN, "m00002")
    assert await state(store, ANN) == ReadState("m00003", 0)


async def test_unread_stops_at_the_cap() -> None:
    inner, store = indexed(tail=UNREAD_CAP + 20)
    await post(store, *range(UNREAD_CAP + 10))
    assert await state(store, ANN) == ReadState(None, UNREAD_CAP)
    await store.mark_read(ROOM, ANN, "m00005")
    assert await state(store, ANN) == ReadState("m00005", UNREAD_CAP)
    await store.mark_read(ROOM, ANN, "m00015")
    assert await state(store, ANN) == ReadState("m00015", UNREAD_CAP - 6)
    assert inner.calls == {"read_tail": 1}
    assert await state(store, ANN) == await inner.truth(ROOM, ANN)


async def test_a_room_larger_than_the_tail() -> None:
    """Readers whose marker is among the messages held, or with a full count of them, are
    answered from memory; the others by the store."""
    inner, store = indexed(tail=10)
    await post(store, *range(30))
    await store.mark_read(ROOM, ANN, "m00025")
    await store.mark_read(ROOM, BOB, "m00002")
    assert await state(store, ANN) == ReadState("m00025", 4)  # held: memory
    assert inner.calls == {"read_tail": 1}
    assert await state(store, BOB) == ReadState("m00002", 0)  # below the tail: the store
    assert await state(store, CAT) == ReadState(None, 30)  # no marker, 10 held: the store
    assert inner.calls == {"read_tail": 1, "read_state": 2}
    await post(store, *range(30, 60))  # the oldest are let go as new ones come
    assert await state(store, ANN) == ReadState("m00025", 34)
    assert await store.mark_read(ROOM, CAT, "m00003") == "m00003"  # below what is held
    assert await state(store, CAT) == ReadState("m00003", 56)
    for reader in (ANN, BOB, CAT):
        assert await state(store, reader) == await inner.truth(ROOM, reader)


async def test_evicted_rooms_are_loaded_again() -> None:
    inner, store = indexed(max_rooms=2)
    for room in ("a", "b", "c"):
        await post(store, 1, 2, room=room)
        assert await state(store, ANN, room) == ReadState(None, 2)
    assert "a" not in store.index and "c" in store.index
    await post(store, 3, room="a")  # a room not held: nothing to keep
    assert await state(store, ANN, "a") == ReadState(None, 3)
    assert inner.calls == {"read_tail": 4}
    assert await state(store, ANN, "c") == ReadState(None, 2)
    assert await state(store, ANN, "a") == ReadState(None, 3)
    assert inner.calls == {"read_tail": 4}


async def test_a_failed_write_clears_the_index() -> None:
    inner, store = indexed()
    await post(store, 1, 2)
    await state(store, ANN)
    inner.available = False
    with pytest.raises(StoreUnavailableError):
        await post(store, 3)
    with pytest.raises(StoreUnavailableError):
        await store.mark_read(ROOM, ANN, "m00002")
    assert ROOM not in store.index
    inner.available = True
    assert await state(store, ANN) == ReadState(None, 2)
    assert inner.calls == {"read_tail": 2}


async def test_a_failed_load_answers_unavailable_and_installs_nothing() -> None:
    inner, store = indexed()
    await post(store, 1)
    inner.available = False
    with pytest.raises(StoreUnavailableError):
        await state(store, ANN)
    inner.available = True
    assert await state(store, ANN) == ReadState(None, 1)


async def test_a_refused_change_keeps_the_index() -> None:
    from roomcast.shared.errors import ProtocolError

    _, store = indexed()
    await post(store, 1)
    await state(store, ANN)
    with pytest.raises(ProtocolError):
        await store.mark_read(ROOM, ANN, "nope")
    with pytest.raises(ProtocolError):
        await store.delete(ROOM, "m00001", author=ANN, username="ann", rev=0)
    assert ROOM in store.index


async def test_concurrent_reads_share_one_load() -> None:
    inner, store = indexed()
    await post(store, 1, 2)
    inner.gate = asyncio.Event()
    readers = [asyncio.ensure_future(state(store, ANN)) for _ in range(20)]
    await asyncio.sleep(0)
    inner.gate.set()
    assert await asyncio.gather(*readers) == [ReadState(None, 2)] * 20
    assert inner.calls == {"read_tail": 1}


async def test_a_write_that_finishes_before_the_snapshot_is_read_counts_once() -> None:
    inner, store = indexed()
    await post(store, 1)
    inner.gate = asyncio.Event()
    reading = asyncio.ensure_future(state(store, ANN))
    await asyncio.sleep(0)
    await post(store, 2)  # stored before the snapshot is read: in it, and replayed too
    await store.mark_read(ROOM, ANN, "m00001")
    inner.gate.set()
    assert await reading == ReadState("m00001", 1)
    assert ROOM in store.index
    assert inner.calls == {"read_tail": 1}


async def test_a_write_that_finishes_after_the_snapshot_is_read_is_replayed() -> None:
    inner, store = indexed()
    await post(store, 1)
    inner.gate_after = asyncio.Event()
    reading = asyncio.ensure_future(state(store, ANN))
    await inner.taken.wait()  # the snapshot is taken (m00001 only), not yet installed
    await post(store, 2, 3)
    await store.mark_read(ROOM, ANN, "m00002")
    await store.delete(ROOM, "m00003", author=BOB, username="bob", rev=0)
    await post(store, 4)
    inner.gate_after.set()
    assert await reading == ReadState("m00002", 1)
    assert ROOM in store.index
    assert inner.calls == {"read_tail": 1}
    for reader in USERS:
        assert await state(store, reader) == await inner.truth(ROOM, reader)


async def test_a_snapshot_that_saw_a_write_halfway_is_not_installed() -> None:
    """insert_many is not atomic: a read meanwhile may see some of its messages."""
    inner, store = indexed()
    await post(store, 1)
    first = await inner.insert_new([msg(2)], [BOB])  # the half the snapshot sees
    inner.gate_after = asyncio.Event()
    reading = asyncio.ensure_future(state(store, ANN))
    await inner.taken.wait()
    second = await inner.insert_new([msg(3)], [BOB])
    store.index.stored(Inserted(first.messages + second.messages, [True, True]))
    inner.gate_after.set()
    assert await reading == ReadState(None, 3)  # from the store
    assert ROOM not in store.index
    assert await state(store, ANN) == ReadState(None, 3)
    assert ROOM in store.index


async def test_a_repeat_is_counted_once() -> None:
    _, store = indexed()
    await post(store, 1, 2)
    await state(store, ANN)
    await post(store, 2, 3, 3)
    assert await state(store, ANN) == ReadState(None, 3)
    assert ROOM in store.index


async def test_a_repeat_of_a_message_not_held_lets_the_room_go() -> None:
    """Another writer stored it (or it is older than what is held): the store knows better."""
    inner, store = indexed()
    await post(store, 1)
    await state(store, ANN)
    await inner.insert_many([msg(2)], [BOB])  # behind history's back
    await post(store, 2)
    assert ROOM not in store.index
    assert await state(store, ANN) == ReadState(None, 2)


async def test_a_reset_loses_the_rooms_and_loads_in_flight() -> None:
    inner, store = indexed()
    await post(store, 1)
    await state(store, ANN)
    store.index.reset("test")
    assert ROOM not in store.index
    inner.gate = asyncio.Event()
    reading = asyncio.ensure_future(state(store, ANN))
    await asyncio.sleep(0)
    store.index.reset("test")
    inner.gate.set()
    assert await reading == ReadState(None, 1)
    assert ROOM not in store.index


async def test_a_request_delivered_before_a_reset_loads_nothing() -> None:
    inner, store = indexed()
    await post(store, 1)

    async def delivered_then_reset() -> ReadState:
        store.index.delivered()
        store.index.reset("connection_lost")
        return await state(store, ANN)

    assert await asyncio.ensure_future(delivered_then_reset()) == ReadState(None, 1)
    assert inner.calls == {"read_state": 1}
    assert ROOM not in store.index


async def test_random_writes_agree_with_the_store() -> None:
    """Messages, deletes and marks in any mix, in a room larger than the tail: every answer is
    the store's."""
    rng = random.Random(11)
    inner, store = indexed(tail=40)
    posted: list[str] = []
    for step in range(600):
        roll = rng.random()
        if roll < 0.55 or not posted:
            who = rng.choice(list(USERS.values()))
            n = len(posted)
            await post(store, n, username=who)
            posted.append(f"m{n:05d}")
        elif roll < 0.7:
            target = rng.choice(posted[-60:])
            await store.delete(ROOM, target, author=ANN, username="ann", moderator=True, rev=0)
        elif roll < 0.9:
            reader = rng.choice(list(USERS))
            await store.mark_read(ROOM, reader, rng.choice(posted[-80:]))
        if step % 7 == 0:
            for reader in USERS:
                assert await state(store, reader) == await inner.truth(ROOM, reader), step
    assert ROOM in store.index
