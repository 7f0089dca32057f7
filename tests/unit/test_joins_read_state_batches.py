"""A gateway's read states go to history in batches (`ReadStateBatcher`): the read states asked
in one turn are one `read_states` request whatever their rooms, each with its own answer and
error; the batch is answered after the writes published before it (no gap); a history that
does not advertise batches is asked singly, and so is one after a batch went unanswered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from roomcast.gateway.clients.readstates import ReadStateBatcher
from roomcast.history.service import HistoryService
from roomcast.shared import rpc, topics
from roomcast.shared.bus import BusTimeoutError, InMemoryBus, Message
from roomcast.shared.errors import ProtocolError
from roomcast.shared.models import ChatMessage
from roomcast.shared.store.base import StoreUnavailableError
from roomcast.shared.store.memory import InMemoryMessageStore
from roomcast.shared.topics import Header
from tests.support.history import running_history

pytestmark = pytest.mark.unit

ROOMS = ("lobby", "attic", "cellar")


@pytest.fixture
async def history() -> AsyncIterator[tuple[InMemoryBus, InMemoryMessageStore, HistoryService]]:
    store = InMemoryMessageStore()
    async with running_history("read-state-batches", store) as (bus, service):
        yield bus, store, service


def requests_of(bus: InMemoryBus, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The history requests sent on the bus, decoded."""
    sent: list[dict[str, Any]] = []
    original = bus.request

    async def request(routing_key: str, body: bytes, **kw: Any) -> bytes:
        if routing_key.startswith("history."):
            sent.append(orjson.loads(body))
        return await original(routing_key, body, **kw)

    monkeypatch.setattr(bus, "request", request)
    return sent


async def post(bus: InMemoryBus, room: str, n: int, username: str = "bob") -> None:
    message = ChatMessage(id=f"{room}-{n}", username=username, body="hi", time=n, room=room)
    await bus.publish(
        topics.room_event(room, "updateChat"),
        orjson.dumps({"event": "updateChat", "room": room, "data": message.wire()}),
        headers={Header.MESSAGE_ID: message.id, Header.AUTHOR: f"hash-{username}"},
        persistent=True,
    )


async def test_a_turns_read_states_are_one_request_each_with_its_own_answer(
    history, monkeypatch
) -> None:
    bus, store, _ = history
    for i, room in enumerate(ROOMS):
        for n in range(i + 2):
            await post(bus, room, n)
    await store.mark_read("attic", "hash-ann", "attic-0")
    batcher = ReadStateBatcher(bus, 5.0)
    first = await batcher.read_state("lobby", "hash-ann", "ann")  # singly: learns batches
    assert (first.last_read, first.unread, batcher.takes_batches) == (None, 2, True)
    sent = requests_of(bus, monkeypatch)
    replies = await asyncio.gather(
        *(batcher.read_state(room, f"hash-{who}", who) for room in ROOMS for who in ("ann", "bob"))
    )
    assert [(r.last_read, r.unread) for r in replies] == [
        (None, 2),  # lobby: ann
        (None, 0),  # bob's own messages are never unread
        ("attic-0", 2),
        (None, 0),
        (None, 4),
        (None, 0),
    ]
    assert [s["op"] for s in sent] == ["read_states"] and len(sent[0]["readers"]) == 6
    assert batcher.requests == 1


async def test_a_batch_is_answered_after_the_writes_published_before_it(history) -> None:
    bus, _, _ = history
    batcher = ReadStateBatcher(bus, 5.0)
    await batcher.read_state("lobby", "hash-ann", "ann")
    posting = [asyncio.ensure_future(post(bus, room, n)) for room in ROOMS for n in range(5)]
    await asyncio.sleep(0)  # routed: queued ahead of the batch
    replies = await asyncio.gather(*(batcher.read_state(r, "hash-ann", "ann") for r in ROOMS))
    assert [r.unread for r in replies] == [5, 5, 5]
    await asyncio.gather(*posting)


async def test_a_reader_the_store_cannot_tell_fails_alone(history, monkeypatch) -> None:
    bus, _, service = history
    batcher = ReadStateBatcher(bus, 5.0)
    await batcher.read_state("lobby", "hash-ann", "ann")
    original = service.index.state

    async def failing(store: Any, room: str, reader: str, username: str | None) -> Any:
        if room == "attic":
            raise StoreUnavailableError("down")
        return await original(store, room, reader, username)

    monkeypatch.setattr(service.index, "state", failing)
    results = await asyncio.gather(
        *(batcher.read_state(r, "hash-ann", "ann") for r in ROOMS), return_exceptions=True
    )
    assert isinstance(results[1], ProtocolError) and results[1].code == "unavailable"
    assert [isinstance(r, rpc.HistoryReply) for r in results] == [True, False, True]


async def _old_history(bus: InMemoryBus, answer: bool = True) -> list[str]:
    """A history of before batches: it answers `read_state` without advertising them, and
    drops what it does not understand (`answer` False: drops everything)."""
    ops: list[str] = []

    async def handle(message: Message) -> None:
        query = orjson.loads(message.body)
        ops.append(query["op"])
        if answer and query["op"] == "read_state":
            reply = {"result": rpc.HistoryReply(messages=[], unread=1).model_dump(mode="json")}
            await bus.reply(message, orjson.dumps(reply))

    await bus.consume("old-history", ["history.*"], handle)
    return ops


async def test_an_older_history_is_asked_singly() -> None:
    bus = InMemoryBus(name="old-history")
    await bus.connect()
    try:
        ops = await _old_history(bus)
        batcher = ReadStateBatcher(bus, 5.0)
        replies = await asyncio.gather(*(batcher.read_state(r, "h", "ann") for r in ROOMS))
        assert [r.unread for r in replies] == [1, 1, 1]
        assert ops == ["read_state"] * 3 and not batcher.takes_batches and batcher.requests == 0
    finally:
        await bus.close()


async def test_a_batch_without_an_answer_sends_the_next_ones_singly(history, monkeypatch) -> None:
    bus, _, _ = history
    batcher = ReadStateBatcher(bus, 0.3)
    await batcher.read_state("lobby", "hash-ann", "ann")
    assert batcher.takes_batches
    # the active history stops answering (an older replica took over): the batch times out
    original = bus.request

    async def unanswered(routing_key: str, body: bytes, **kw: Any) -> bytes:
        if orjson.loads(body)["op"] == "read_states":
            await asyncio.sleep(kw["timeout"])
            raise BusTimeoutError("no reply")
        return await original(routing_key, body, **kw)

    monkeypatch.setattr(bus, "request", unanswered)
    results = await asyncio.gather(
        *(batcher.read_state(r, "hash-ann", "ann") for r in ROOMS), return_exceptions=True
    )
    assert all(isinstance(r, BusTimeoutError) for r in results)
    assert not batcher.takes_batches
    monkeypatch.setattr(bus, "request", original)
    reply = await batcher.read_state("lobby", "hash-ann", "ann")  # singly, and learns again
    assert reply.unread == 0 and batcher.takes_batches
