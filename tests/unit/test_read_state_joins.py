"""Read states of joins without the database: the gateway asks history `read_state` for a join
into a room it serves, and history answers from its read index, in queue order.

The in-memory store's methods are counted: a storm of joins into a known room reads nothing
from it per join. History's takeover watch is exercised with the in-memory bus's `outage`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from roomcast.history.service import HistoryService
from roomcast.shared import rpc, topics
from roomcast.shared.bus import InMemoryBus
from roomcast.shared.models import ChatMessage
from roomcast.shared.store.memory import InMemoryMessageStore
from roomcast.shared.topics import Header
from tests.support.chat_client import ChatClient
from tests.support.history import running_history
from tests.support.inprocess import Server

pytestmark = pytest.mark.unit

ROOM = "lobby"
READS = ("read_state", "read_tail", "newest", "after", "before", "since_rev", "get")


def count_store_reads(store: InMemoryMessageStore, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    calls: Counter[str] = Counter()
    for name in READS:
        original = getattr(store, name)

        async def counted(*args: Any, _original: Any = original, _name: str = name) -> Any:
            calls[_name] += 1
            return await _original(*args)

        monkeypatch.setattr(store, name, counted)
    return calls


def count_history_ops(server: Server, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ops of the queries the gateway sends history, one per reader of a `read_states`
    batch (as the bus carries them)."""
    ops: list[str] = []
    bus = server.system.gateway.bus
    original = bus.request

    async def asked(routing_key: str, body: bytes, **kw: Any) -> Any:
        if routing_key.startswith("history."):
            query = orjson.loads(body)
            if query["op"] == "read_states":
                ops.extend("read_state" for _ in query["readers"])
            else:
                ops.append(query["op"])
        return await original(routing_key, body, **kw)

    monkeypatch.setattr(bus, "request", asked)
    return ops


@pytest.mark.settings(rate_per_second=100, rate_burst=100)
async def test_a_storm_of_joins_into_a_known_room_reads_nothing_per_join(
    server, connect, monkeypatch
) -> None:
    alice: ChatClient = await connect()
    await alice.join("alice")
    for i in range(3):
        await alice.say("main", f"hello {i}")
    calls = count_store_reads(server.messages, monkeypatch)
    ops = count_history_ops(server, monkeypatch)
    joiners: list[ChatClient] = [await connect() for _ in range(25)]
    acks = await asyncio.gather(*(c.join(f"user{i}") for i, c in enumerate(joiners)))
    assert [(a["unread"], a["lastRead"]) for a in acks] == [(3, None)] * 25
    assert ops == ["read_state"] * 25  # msgHistory came from the gateway's room cache
    assert sum(calls.values()) == 0  # loaded by alice's join: from memory, no read per join
    assert (await alice.request("userJoin", {"username": "alice", "room": "main"}))["unread"] == 0


async def test_a_repeated_join_refreshes_its_read_state_from_memory(
    server, connect, monkeypatch
) -> None:
    alice: ChatClient = await connect()
    await alice.join("alice")
    bob: ChatClient = await connect()
    await bob.join("bob")
    await alice.say("main", "one")
    await alice.say("main", "two")
    await bob.wait_for(lambda f: f["event"] == "updateChat" and f["data"]["body"] == "two")
    calls = count_store_reads(server.messages, monkeypatch)
    ops = count_history_ops(server, monkeypatch)
    again = await bob.request("userJoin", {"username": "bob", "room": "main"})
    assert again["already"] is True and again["unread"] == 2
    assert ops == ["read_state"] and sum(calls.values()) == 0


@pytest.fixture
async def history() -> AsyncIterator[tuple[InMemoryBus, InMemoryMessageStore, HistoryService]]:
    store = InMemoryMessageStore()
    async with running_history("read-state", store) as (bus, service):
        yield bus, store, service


async def post(bus: InMemoryBus, n: int, username: str = "bob") -> None:
    message = ChatMessage(id=f"m{n:04d}", username=username, body="hi", time=n, room=ROOM, rev=n)
    frame = {"event": "updateChat", "room": ROOM, "data": message.wire()}
    await bus.publish(
        topics.room_event(ROOM, "updateChat"),
        orjson.dumps(frame),
        headers={Header.MESSAGE_ID: message.id, Header.AUTHOR: f"hash-{username}"},
        persistent=True,
    )


async def read_state(bus: InMemoryBus, reader: str = "hash-ann") -> rpc.HistoryReply:
    query = rpc.HistoryQuery(op="read_state", limit=1, reader=reader, username="ann")
    result = await rpc.call(bus, topics.history_request(ROOM), query, timeout=5.0)
    return rpc.HistoryReply.model_validate(result)


async def test_read_state_answers_after_the_messages_ahead_of_it(history) -> None:
    bus, _, _ = history
    await post(bus, 1)
    assert (await read_state(bus)).unread == 1  # the room is loaded now
    posting = [asyncio.ensure_future(post(bus, n)) for n in range(2, 12)]
    await asyncio.sleep(0)  # routed: queued ahead of the read
    reply = await read_state(bus)
    assert (reply.messages, reply.last_read, reply.unread) == ([], None, 11)
    await asyncio.gather(*posting)
    await post(bus, 12, username="ann")
    assert (await read_state(bus)).unread == 11  # her own


async def test_a_lost_connection_clears_what_history_held(history) -> None:
    """Another replica may take over while the connection is down and write: what was loaded
    before must not be trusted after."""
    bus, store, service = history
    await post(bus, 1)
    assert (await read_state(bus)).unread == 1
    assert ROOM in service.index
    async with bus.outage():
        assert ROOM not in service.index
        # the other replica, active meanwhile, stores a message and a marker
        await store.insert_many(
            [ChatMessage(id="m0002", username="cat", body="x", time=2, room=ROOM)]
        )
        await store.mark_read(ROOM, "hash-ann", "m0001")
    reply = await read_state(bus)
    assert (reply.last_read, reply.unread) == ("m0001", 1)


async def test_a_reconnect_clears_what_was_loaded_while_the_connection_was_down(
    history,
) -> None:
    bus, store, service = history
    await post(bus, 1)
    async with bus.outage():
        await service.index.state(store, ROOM, "hash-ann", "ann")  # a late request loads
        assert ROOM in service.index
    for _ in range(500):  # the gap is reported in a task of its own
        if ROOM not in service.index:
            break
        await asyncio.sleep(0.01)
    assert ROOM not in service.index
