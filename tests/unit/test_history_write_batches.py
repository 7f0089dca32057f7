"""History's writes in batches (`WriteBatcher`): messages wait a moment to share one write
(each costs the database a round trip), but never a read: a read or a change writes what is
ahead of it at once, so no-gap joins stay as quick as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import orjson
import pytest

from roomcast.history.service import WriteBatcher
from roomcast.shared import rpc, topics
from roomcast.shared.bus import InMemoryBus
from roomcast.shared.models import ChatMessage
from roomcast.shared.store.base import Inserted
from roomcast.shared.store.memory import InMemoryMessageStore
from tests.support.history import running_history

pytestmark = pytest.mark.unit

ROOM = "lobby"
FOREVER = 3600.0  # a linger no test waits out


class CountingStore(InMemoryMessageStore):
    """Records the size of every write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    async def insert_new(
        self, messages: list[ChatMessage], authors: Sequence[str | None] | None = None
    ) -> Inserted:
        self.writes.append(len(messages))
        return await super().insert_new(messages, authors)


def msg(n: int) -> ChatMessage:
    return ChatMessage(id=f"m{n:04d}", username="ann", body=f"hi {n}", time=n, room=ROOM, rev=n)


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_messages_wait_to_share_a_write_and_a_drain_writes_them_at_once() -> None:
    store = CountingStore()
    batcher = WriteBatcher(store, linger=FOREVER)
    written = [batcher.add(msg(n)) for n in range(1, 4)]
    await turns()
    batcher.add(msg(4))
    await turns()
    assert store.writes == []  # still gathering
    await batcher.drain()
    assert store.writes == [4]
    assert [f.result().id for f in written] == ["m0001", "m0002", "m0003"]


async def test_a_full_batch_is_written_without_waiting() -> None:
    store = CountingStore()
    batcher = WriteBatcher(store, max_batch=3, linger=FOREVER)
    full = [batcher.add(msg(n)) for n in range(1, 5)]
    await asyncio.wait(full[:3])
    assert store.writes == [3] and not full[3].done()
    await batcher.drain()
    assert store.writes == [3, 1]


async def test_messages_added_after_a_drain_wait_again() -> None:
    store = CountingStore()
    batcher = WriteBatcher(store, linger=FOREVER)
    batcher.add(msg(1))
    draining = asyncio.ensure_future(batcher.drain())
    await turns()
    later = batcher.add(msg(2))
    await draining
    await turns()
    assert store.writes == [1] and not later.done()
    await batcher.drain()
    assert store.writes == [1, 1]


async def test_a_linger_that_runs_out_writes() -> None:
    store = CountingStore()
    batcher = WriteBatcher(store, linger=0.01)
    await batcher.add(msg(1))
    assert store.writes == [1]


@pytest.fixture
async def history() -> AsyncIterator[tuple[InMemoryBus, CountingStore]]:
    store = CountingStore()
    async with running_history("history-write-batches", store, write_linger=FOREVER) as (bus, _):
        yield bus, store


async def test_a_read_does_not_wait_for_the_linger_and_sees_every_message_ahead(
    history: tuple[InMemoryBus, CountingStore],
) -> None:
    bus, store = history
    for n in range(1, 6):
        frame = {"event": "updateChat", "room": ROOM, "data": msg(n).wire()}
        await bus.publish(topics.room_event(ROOM, "updateChat"), orjson.dumps(frame))
    query = rpc.HistoryQuery(op="recent", limit=50)
    result = await rpc.call(bus, topics.history_request(ROOM), query, timeout=5.0)
    reply = rpc.HistoryReply.model_validate(result)
    assert [m.id for m in reply.messages] == [f"m{n:04d}" for n in range(1, 6)]
    assert store.writes == [5]
