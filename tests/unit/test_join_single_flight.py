"""Joins into a room the gateway does not serve yet share one history read (`RoomCache.warm`):
a reconnect storm brings a hundred joins with `since` into each cold room at once. Each still
gets exactly the messages after its own `since` (no gap, no repeat), and when the shared read
fails each join fails or asks again as PROTOCOL.md 2.2 says.

History's message reads are held at a gate until every join has reached the gateway, so the
joins are concurrent by construction, not by timing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from roomcast.gateway.events import chat
from roomcast.gateway.gateway import ChatGateway
from roomcast.gateway.protocol import event_frame
from roomcast.gateway.relay import Seen
from roomcast.shared.bus import BusTimeoutError
from roomcast.shared.errors import ProtocolError
from roomcast.shared.models import ChatMessage
from tests.support.chat_client import ChatClient
from tests.support.inprocess import Server
from tests.unit.test_join_cache import seen_ids

pytestmark = pytest.mark.unit

ROOM = "lobby"
BUDGETS = {"rate_per_second": 100, "rate_burst": 100, "join_per_second": 100, "join_burst": 100}


class Gate:
    """Wraps the gateway's history reads: counts message reads (a `recent` of one message is a
    cached join's read state, not counted) and holds each message read's answer until opened;
    `fail` makes the held read raise instead."""

    def __init__(self, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[str] = []
        self.open = asyncio.Event()
        self.answered = asyncio.Event()  # a message read has its answer and waits at the gate
        self.fail: BaseException | None = None
        history = server.system.gateway.history
        for name in ("recent", "since", "since_rev"):
            monkeypatch.setattr(history, name, self._wrap(name, getattr(history, name)))

    def _wrap(self, name: str, original: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def gated(room: str, *args: Any, **kw: Any) -> Any:
            if name == "recent" and args and args[0] == 1:
                return await original(room, *args, **kw)
            self.reads.append(name)
            reply = await original(room, *args, **kw)
            self.answered.set()
            await self.open.wait()
            if self.fail is not None and len(self.reads) == 1:
                raise self.fail
            return reply

        return gated


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not check():  # noqa: ASYNC110 (a state inside the server, not an event)
            await asyncio.sleep(0.01)


def post(gw: ChatGateway, body: str) -> Awaitable[None]:
    """A message from elsewhere (another gateway, the backend): published to the room."""
    message = ChatMessage(
        id=uuid.uuid4().hex,
        username="elsewhere",
        body=body,
        time=int(time.time() * 1000),
        room=ROOM,
        rev=gw.revs.next(),
    )
    frame = event_frame("updateChat", message.wire(), room=ROOM)
    seen = Seen(uuid.uuid4().hex[:16], frame, relayed=False, pending=True)
    gw.recent.remember(ROOM, message.id, seen)
    return chat.publish(gw, ROOM, message.id, seen, origin="test", author="")


async def cold_room(server: Server, connect: Callable[..., Awaitable[ChatClient]]) -> list[str]:
    """A room with 30 stored messages that the gateway no longer serves; their ids."""
    writer: ChatClient = await connect()
    await writer.join("writer", ROOM)
    ids = [(await writer.say(ROOM, f"old {i}"))["id"] for i in range(30)]
    await writer.request("userLeave", {"room": ROOM})
    assert not server.system.gateway.membership.members(ROOM)
    return ids


async def joining(
    server: Server,
    connect: Callable[..., Awaitable[ChatClient]],
    sinces: list[str],
) -> tuple[list[ChatClient], list[asyncio.Task[Any]]]:
    """Clients joining the room with these `since` ids at once; returns once every one of
    them is in the gateway's record of the room (its join waits for history)."""
    clients = [await connect() for _ in sinces]
    joins = [
        asyncio.create_task(c.join(f"user{i}", ROOM, since=s))
        for i, (c, s) in enumerate(zip(clients, sinces, strict=True))
    ]
    membership = server.system.gateway.membership
    await until(lambda: len(membership.members(ROOM)) == len(sinces))
    return clients, joins


async def has(client: ChatClient, message_id: str) -> None:
    """Until the client got the message (in `msgHistory` or live)."""
    await until(lambda: message_id in seen_ids(client, ROOM))


@pytest.mark.settings(**BUDGETS)
async def test_a_hundred_joins_with_since_into_a_cold_room_share_one_read(
    server, connect, monkeypatch
) -> None:
    old = await cold_room(server, connect)
    gate = Gate(server, monkeypatch)
    sinces = [old[i % 30] for i in range(100)]
    clients, joins = await joining(server, connect, sinces)
    # history answered the shared read; two messages come before that answer reaches the
    # gateway: they are in no answer, only live (held by each member, noted by the cache)
    await asyncio.wait_for(gate.answered.wait(), 10)
    gw = server.system.gateway
    late = []
    for body in ("late 1", "late 2"):
        before = gw.relay.last_ids.get(ROOM)
        await post(gw, body)
        await until(lambda before=before: gw.relay.last_ids.get(ROOM) != before)
        late.append(gw.relay.last_ids[ROOM])
    gate.open.set()
    acks = await asyncio.gather(*joins)
    assert gate.reads == ["recent"]  # one read of messages for all hundred joins
    everything = old + late
    for client, since, ack in zip(clients, sinces, acks, strict=True):
        assert ack["recovered"] is True and "history" not in ack, ack
        await has(client, late[-1])
        assert seen_ids(client, ROOM) == everything[everything.index(since) + 1 :]


@pytest.mark.settings(**BUDGETS)
async def test_joins_without_since_into_a_cold_room_share_one_read(
    server, connect, monkeypatch
) -> None:
    old = await cold_room(server, connect)
    gate = Gate(server, monkeypatch)
    clients = [await connect() for _ in range(5)]
    joins = asyncio.gather(*(c.join(f"user{i}", ROOM) for i, c in enumerate(clients)))
    await until(lambda: len(server.system.gateway.membership.members(ROOM)) == 5)
    gate.open.set()
    await joins
    assert gate.reads == ["recent"]
    for client in clients:
        assert seen_ids(client, ROOM) == old[-server.settings.history_default :]


@pytest.mark.settings(**BUDGETS, request_timeout=0.5)
async def test_a_shared_read_history_does_not_answer_joins_each_without_history(
    server, connect, monkeypatch
) -> None:
    old = await cold_room(server, connect)
    gate = Gate(server, monkeypatch)
    gate.fail = BusTimeoutError("history did not answer")
    clients, joins = await joining(server, connect, [old[5], old[10], old[20]])
    gate.open.set()
    acks = await asyncio.gather(*joins)
    assert gate.reads == ["recent"]  # not asked again by each join
    for client, ack in zip(clients, acks, strict=True):
        assert ack["history"] is False and ack["recovered"] is False, ack
        assert (await client.event("msgHistory", ROOM))["data"] == []
    # the room is not left poisoned: a later join seeds it with a read of its own
    late: ChatClient = await connect()
    ack = await late.join("late", ROOM, since=old[25])
    assert ack["recovered"] is True
    assert seen_ids(late, ROOM) == old[26:]
    assert gate.reads == ["recent", "recent"]


@pytest.mark.settings(**BUDGETS)
async def test_a_shared_read_history_refuses_lets_each_join_ask_on_its_own(
    server, connect, monkeypatch
) -> None:
    old = await cold_room(server, connect)
    gate = Gate(server, monkeypatch)
    gate.fail = ProtocolError("internal", "refused")
    sinces = [old[5], old[10], old[20]]
    clients, joins = await joining(server, connect, sinces)
    gate.open.set()
    acks = await asyncio.gather(*joins)
    assert sorted(gate.reads) == ["recent", "since", "since", "since"]
    for client, since, ack in zip(clients, sinces, acks, strict=True):
        assert ack["recovered"] is True, ack
        assert seen_ids(client, ROOM) == old[old.index(since) + 1 :]


@pytest.mark.settings(**BUDGETS)
async def test_a_shared_read_across_a_loss_of_deliveries_seeds_nothing(
    server, connect, monkeypatch
) -> None:
    """Deliveries may have been lost while the read was out: its answer plus what was noted
    is not the room's history, so each join asks history itself (and misses nothing)."""
    old = await cold_room(server, connect)
    gate = Gate(server, monkeypatch)
    sinces = [old[3], old[17]]
    clients, joins = await joining(server, connect, sinces)
    await asyncio.wait_for(gate.answered.wait(), 10)
    cache = server.system.gateway.room_cache
    cache.lost()
    cache.resumed()
    gate.open.set()
    acks = await asyncio.gather(*joins)
    assert sorted(gate.reads) == ["recent", "since", "since"]
    for client, since, ack in zip(clients, sinces, acks, strict=True):
        assert ack["recovered"] is True, ack
        assert seen_ids(client, ROOM) == old[old.index(since) + 1 :]


@pytest.mark.settings(**BUDGETS)
async def test_a_join_that_gives_up_does_not_cancel_the_shared_read(
    server, connect, monkeypatch
) -> None:
    old = await cold_room(server, connect)
    gate = Gate(server, monkeypatch)
    clients, joins = await joining(server, connect, [old[1], old[2]])
    gw = server.system.gateway
    # the server closes one of the sockets (a 4003 from the backend, a drain): its join,
    # waiting for the shared read, is cancelled with it
    next(iter(gw.membership.members(ROOM))).conn.close_soon(1000)
    await until(lambda: len(gw.membership.members(ROOM)) == 1)
    gate.open.set()
    results = await asyncio.gather(*joins, return_exceptions=True)
    (stayed,) = [c for c, r in zip(clients, results, strict=True) if isinstance(r, dict)]
    ack = results[clients.index(stayed)]
    assert isinstance(ack, dict) and ack["recovered"] is True
    since = [old[1], old[2]][clients.index(stayed)]
    assert seen_ids(stayed, ROOM) == old[old.index(since) + 1 :]
    assert gate.reads == ["recent"]


@pytest.mark.settings(**BUDGETS)
async def test_cold_joins_ask_their_read_states_beside_the_shared_read(
    server, connect, monkeypatch
) -> None:
    """A cold room's joins ask history for their read states while the shared read of its
    messages is out, not one round trip after it."""
    await cold_room(server, connect)
    gate = Gate(server, monkeypatch)
    history = server.system.gateway.history
    asked: list[str | None] = []
    original = history.read_state

    async def counted(room: str, reader: str, username: str | None) -> Any:
        asked.append(username)
        return await original(room, reader, username)

    monkeypatch.setattr(history, "read_state", counted)
    clients = [await connect() for _ in range(5)]
    joins = asyncio.gather(*(c.join(f"user{i}", ROOM) for i, c in enumerate(clients)))
    await until(lambda: len(asked) == 5)  # the shared read is held at the gate meanwhile
    assert gate.reads == ["recent"] and not gate.open.is_set()
    gate.open.set()
    acks = await joins
    assert sorted(asked) == [f"user{i}" for i in range(5)]
    assert [(a["lastRead"], a["unread"]) for a in acks] == [(None, 30)] * 5
