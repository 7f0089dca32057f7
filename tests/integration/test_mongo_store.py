"""`MongoMessageStore` and `MongoRoomStore` against a real SecantusDB server."""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient, monitoring

from roomcast.shared.models import ChatMessage
from roomcast.shared.secantus import SecantusServer
from roomcast.shared.store.base import RoomMember, StoreUnavailableError
from roomcast.shared.store.mongo import MongoMessageStore, MongoRoomStore

pytestmark = pytest.mark.integration

ANN = RoomMember("ann", "hash-ann")
BOB = RoomMember("bob", "hash-bob")
CAT = RoomMember("cat", "hash-cat")
DAN = RoomMember("dan", "hash-dan")


def msg(n: int, room: str = "lobby", body: str | None = None) -> ChatMessage:
    """Message n, proposing rev n: stored in order of n, the store keeps that rev (2.3)."""
    return ChatMessage(
        id=f"m{n:04d}",
        username="ann",
        body=body or f"hello {n}",
        time=1_700_000_000 + n,
        room=room,
        rev=n,
    )


def msgs(first: int, last: int, room: str = "lobby") -> list[ChatMessage]:
    return [msg(n, room) for n in range(first, last + 1)]


def unrevved(messages: list[ChatMessage]) -> list[ChatMessage]:
    """The messages without their revs: a store may raise a proposal (a repeat found by the
    unique index took one, a writer that took over starts above what was reserved)."""
    return [m.model_copy(update={"rev": 0}) for m in messages]


def growing(messages: list[ChatMessage], above: int) -> bool:
    revs = [m.rev for m in messages]
    return revs == sorted(set(revs)) and all(rev > above for rev in revs)


@pytest_asyncio.fixture
async def messages(mongo_url: str, mongo_db: str) -> AsyncIterator[MongoMessageStore]:
    store = MongoMessageStore(mongo_url, mongo_db)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest_asyncio.fixture
async def rooms(mongo_url: str, mongo_db: str) -> AsyncIterator[MongoRoomStore]:
    store = MongoRoomStore(mongo_url, mongo_db)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def raw_docs(url: str, db: str, room: str) -> list[dict[str, Any]]:
    """The stored documents of a room, as the database holds them, in `seq` order."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    try:
        return await client[db]["messages"].find({"room": room}, {"_id": 0}).sort("seq").to_list()
    finally:
        await client.close()


# --- messages ------------------------------------------------------------------------------


async def test_insert_stores_in_list_order_with_increasing_seq(
    messages: MongoMessageStore, mongo_url: str, mongo_db: str
) -> None:
    batch = [msg(3), msg(1), msg(2)]
    stored = await messages.insert_many(batch)
    # proposals below the room's largest rev are raised (2.3)
    assert stored == [
        m.model_copy(update={"rev": rev}) for m, rev in zip(batch, (3, 4, 5), strict=True)
    ]
    later = [m.model_copy(update={"rev": rev}) for m, rev in zip(msgs(4, 5), (6, 7), strict=True)]
    assert await messages.insert_many(msgs(4, 5)) == later

    docs = await raw_docs(mongo_url, mongo_db, "lobby")
    assert [d["id"] for d in docs] == ["m0003", "m0001", "m0002", "m0004", "m0005"]
    seqs = [d["seq"] for d in docs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert await messages.newest("lobby", 10) == [*stored, *later]


async def test_insert_nothing(messages: MongoMessageStore) -> None:
    assert await messages.insert_many([]) == []
    assert await messages.newest("lobby", 10) == []


async def test_a_repeat_in_a_later_call_returns_the_stored_one(
    messages: MongoMessageStore, mongo_url: str, mongo_db: str
) -> None:
    first = msg(1, body="original")
    await messages.insert_many([first])
    repeat = msg(1, body="changed")

    stored = await messages.insert_many([msg(2), repeat, msg(3)])

    assert stored[:2] == [msg(2), first]
    assert unrevved(stored[2:]) == unrevved([msg(3)]) and growing(stored[::2], 1)
    assert await messages.get("lobby", "m0001") == first
    assert await messages.newest("lobby", 10) == [first, stored[0], stored[2]]
    assert len(await raw_docs(mongo_url, mongo_db, "lobby")) == 3


async def test_a_repeat_within_one_batch_returns_the_earlier_one(
    messages: MongoMessageStore, mongo_url: str, mongo_db: str
) -> None:
    first, repeat = msg(1, body="first"), msg(1, body="second")

    stored = await messages.insert_many([first, msg(2), repeat, first])

    assert stored == [first, msg(2), first, first]
    assert await messages.newest("lobby", 10) == [first, msg(2)]
    assert len(await raw_docs(mongo_url, mongo_db, "lobby")) == 2


async def test_a_whole_batch_of_repeats(messages: MongoMessageStore) -> None:
    await messages.insert_many(msgs(1, 3))
    assert await messages.insert_many(msgs(1, 3)) == msgs(1, 3)
    assert await messages.newest("lobby", 10) == msgs(1, 3)


async def test_the_same_id_in_two_rooms_is_two_messages(messages: MongoMessageStore) -> None:
    a, b = msg(1, "a", body="in a"), msg(1, "b", body="in b")
    assert await messages.insert_many([a, b]) == [a, b]
    assert await messages.get("a", "m0001") == a
    assert await messages.get("b", "m0001") == b


async def test_a_large_batch_with_repeats(
    messages: MongoMessageStore, mongo_url: str, mongo_db: str
) -> None:
    await messages.insert_many(msgs(1, 500, "big")[::2])  # the odd ones
    everything = msgs(1, 500, "big")

    answered = await messages.insert_many(everything)
    assert [m.id for m in answered] == [m.id for m in everything]
    assert answered[::2] == everything[::2]  # the repeats, unchanged
    evens = answered[1::2]
    assert unrevved(evens) == unrevved(everything[1::2])
    assert growing(evens, 499)  # new ones after rev 499, in list order

    stored = await raw_docs(mongo_url, mongo_db, "big")
    assert len(stored) == 500
    odd_first = msgs(1, 500, "big")[::2] + msgs(1, 500, "big")[1::2]
    assert [d["id"] for d in stored] == [m.id for m in odd_first]
    assert await messages.newest("big", 250) == evens


async def opcounters(url: str) -> dict[str, int]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    try:
        return dict((await client.admin.command("serverStatus"))["opcounters"])
    finally:
        await client.close()


async def test_once_its_counters_are_read_a_batch_of_new_messages_is_one_insert(
    messages: MongoMessageStore, mongo_url: str
) -> None:
    """The one writer hands seqs and revs out from memory between reservations, and lets the
    unique index find repeats: a batch of new messages costs the database one insert, no
    lookup and no counter update (each a round trip of real CPU on the server)."""
    await messages.insert_many(msgs(1, 3))  # reads the room's rev, reserves a block of seqs
    before = await opcounters(mongo_url)
    stored = await messages.insert_many(msgs(4, 6))
    after = await opcounters(mongo_url)

    assert stored == msgs(4, 6)
    spent = {op: after[op] - before[op] for op in ("query", "update", "getmore")}
    assert spent == {"query": 0, "update": 0, "getmore": 0}
    assert after["insert"] > before["insert"]


class Commands(monitoring.CommandListener):
    """The commands clients of this process send (the last ones), as the driver sends them."""

    def __init__(self) -> None:
        self.sent: deque[tuple[str, dict[str, Any]]] = deque(maxlen=200)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.sent.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


COMMANDS = Commands()
monitoring.register(COMMANDS)  # for every client made from now on in this process


async def test_the_message_store_asks_the_server_to_keep_no_retry_records(
    mongo_url: str, mongo_db: str
) -> None:
    """Every retryable write (a `txnNumber`) makes a server keep its reply for a retry;
    history's writes need no such retry, so they carry none."""
    store = MongoMessageStore(mongo_url, mongo_db)
    await store.open()
    try:
        COMMANDS.sent.clear()
        await store.insert_many(msgs(1, 3))
        await store.edit("lobby", "m0001", author="", username="ann", body="e", at=1, rev=9)
        await store.mark_read("lobby", "hash-ann", "m0002")
    finally:
        await store.close()
    writes = [c for name, c in COMMANDS.sent if name in ("insert", "update", "findAndModify")]
    assert len(writes) >= 3
    assert not [c for c in writes if "txnNumber" in c]


async def test_get(messages: MongoMessageStore) -> None:
    await messages.insert_many(msgs(1, 3))
    assert await messages.get("lobby", "m0002") == msg(2)
    assert await messages.get("lobby", "nope") is None
    assert await messages.get("elsewhere", "m0002") is None


async def test_newest_is_the_last_n_oldest_first(messages: MongoMessageStore) -> None:
    await messages.insert_many(msgs(1, 4))
    await messages.insert_many(msgs(5, 10))
    assert await messages.newest("lobby", 3) == msgs(8, 10)
    assert await messages.newest("lobby", 1) == [msg(10)]
    assert await messages.newest("lobby", 50) == msgs(1, 10)
    assert await messages.newest("lobby", 0) == []
    assert await messages.newest("empty", 5) == []


async def test_after(messages: MongoMessageStore) -> None:
    await messages.insert_many(msgs(1, 10))
    assert await messages.after("lobby", "m0003", 4) == msgs(4, 7)
    assert await messages.after("lobby", "m0007", 100) == msgs(8, 10)
    assert await messages.after("lobby", "m0001", 1) == [msg(2)]
    assert await messages.after("lobby", "m0010", 5) == []
    assert await messages.after("lobby", "m0003", 0) == []
    assert await messages.after("lobby", "unknown", 5) is None


async def test_before_pages_through_the_whole_room(messages: MongoMessageStore) -> None:
    await messages.insert_many(msgs(1, 10))
    assert await messages.before("lobby", None, 3) == msgs(8, 10)
    assert await messages.before("lobby", "m0005", 2) == msgs(3, 4)
    assert await messages.before("lobby", "m0001", 5) == []
    assert await messages.before("lobby", "unknown", 5) is None

    pages: list[list[ChatMessage]] = []
    cursor: str | None = None
    while page := await messages.before("lobby", cursor, 3):
        pages.append(page)
        cursor = page[0].id
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [m for p in reversed(pages) for m in p] == msgs(1, 10)


async def test_rooms_are_isolated(messages: MongoMessageStore) -> None:
    await messages.insert_many([msg(1, "a"), msg(2, "b"), msg(3, "a"), msg(4, "b")])
    assert await messages.newest("a", 10) == [msg(1, "a"), msg(3, "a")]
    assert await messages.newest("b", 10) == [msg(2, "b"), msg(4, "b")]
    assert await messages.after("a", "m0001", 10) == [msg(3, "a")]
    assert await messages.before("b", "m0004", 10) == [msg(2, "b")]
    assert await messages.after("b", "m0001", 10) is None
    assert await messages.before("a", "m0004", 10) is None
    assert await messages.get("b", "m0001") is None


async def test_open_is_idempotent_and_data_survives_reopening(
    mongo_url: str, mongo_db: str
) -> None:
    store = MongoMessageStore(mongo_url, mongo_db)
    await store.open()
    await store.open()
    await store.insert_many(msgs(1, 3))
    await store.close()
    await store.close()

    reopened = MongoMessageStore(mongo_url, mongo_db)
    await reopened.open()
    try:
        again, new = await reopened.insert_many([msg(2, body="again"), msg(4)])
        assert again == msg(2) and unrevved([new]) == unrevved([msg(4)]) and new.rev > 3
        assert await reopened.newest("lobby", 10) == [*msgs(1, 3), new]
    finally:
        await reopened.close()


async def test_errors_and_logs_never_show_the_url(capfd: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = MongoMessageStore(
        f"mongodb://roomcast:s3cret-pw@127.0.0.1:{port}", "roomcast", server_selection_timeout=0.5
    )
    with pytest.raises(StoreUnavailableError) as caught:
        await store.open()
    assert "s3cret" not in str(caught.value)
    assert await store.ping() is False
    out, err = capfd.readouterr()
    assert "s3cret" not in out + err


async def test_a_store_that_is_not_open_is_unavailable(mongo_url: str, mongo_db: str) -> None:
    store = MongoMessageStore(mongo_url, mongo_db)
    assert await store.ping() is False
    with pytest.raises(StoreUnavailableError):
        await store.newest("lobby", 1)


async def test_ping(messages: MongoMessageStore, rooms: MongoRoomStore) -> None:
    assert await messages.ping() is True
    assert await rooms.ping() is True


# --- private rooms -------------------------------------------------------------------------


async def test_make_private(rooms: MongoRoomStore) -> None:
    assert await rooms.get_private("secret") is None

    made = await rooms.make_private("secret", (ANN, BOB))

    assert made.room == "secret"
    assert made.members == (ANN, BOB)
    assert await rooms.get_private("secret") == made
    assert made.admits("ann", "hash-ann")
    assert not made.admits("ann", "hash-other")
    assert await rooms.get_private("other") is None


async def test_a_second_pair_gets_the_first_pair_back(rooms: MongoRoomStore) -> None:
    first = await rooms.make_private("secret", (ANN, BOB))
    assert await rooms.make_private("secret", (CAT, DAN)) == first
    assert await rooms.make_private("secret", (ANN, BOB)) == first
    assert await rooms.get_private("secret") == first


async def test_racing_pairs_agree_on_one_owner(rooms: MongoRoomStore) -> None:
    pairs = [(RoomMember(f"u{i}", f"h{i}"), BOB) for i in range(10)]
    results = await asyncio.gather(*(rooms.make_private("race", pair) for pair in pairs))
    assert len(set(results)) == 1
    assert results[0].members in pairs
    assert await rooms.get_private("race") == results[0]


async def test_private_rooms_survive_reopening(mongo_url: str, mongo_db: str) -> None:
    store = MongoRoomStore(mongo_url, mongo_db)
    await store.open()
    made = await store.make_private("secret", (ANN, BOB))
    await store.close()

    reopened = MongoRoomStore(mongo_url, mongo_db)
    await reopened.open()
    try:
        assert await reopened.get_private("secret") == made
        assert await reopened.make_private("secret", (CAT, DAN)) == made
    finally:
        await reopened.close()


# --- the server goes away ------------------------------------------------------------------


async def test_data_survives_a_server_restart(own_secantus: SecantusServer) -> None:
    message_store = MongoMessageStore(own_secantus.url, "roomcast")
    room_store = MongoRoomStore(own_secantus.url, "roomcast")
    await message_store.open()
    await room_store.open()
    await message_store.insert_many(msgs(1, 5))
    made = await room_store.make_private("secret", (ANN, BOB))
    await message_store.close()
    await room_store.close()

    await own_secantus.restart()

    message_store = MongoMessageStore(own_secantus.url, "roomcast")
    room_store = MongoRoomStore(own_secantus.url, "roomcast")
    await message_store.open()
    await room_store.open()
    try:
        assert await message_store.newest("lobby", 10) == msgs(1, 5)
        assert await room_store.get_private("secret") == made
        # Still idempotent, and new messages come after the old ones.
        again, *new = await message_store.insert_many([msg(3, body="again"), *msgs(6, 7)])
        assert again == msg(3) and unrevved(new) == unrevved(msgs(6, 7)) and growing(new, 5)
        assert await message_store.newest("lobby", 10) == [*msgs(1, 5), *new]
        assert await message_store.after("lobby", "m0005", 10) == new
    finally:
        await message_store.close()
        await room_store.close()


async def test_a_stopped_server_is_unavailable_not_a_hang(own_secantus: SecantusServer) -> None:
    message_store = MongoMessageStore(own_secantus.url, "roomcast", server_selection_timeout=1.0)
    room_store = MongoRoomStore(own_secantus.url, "roomcast", server_selection_timeout=1.0)
    await message_store.open()
    await room_store.open()
    try:
        await message_store.insert_many(msgs(1, 2))
        await own_secantus.stop()

        assert await message_store.ping() is False
        assert await room_store.ping() is False
        with pytest.raises(StoreUnavailableError) as caught:
            await message_store.insert_many([msg(3)])
        assert "mongodb://" not in str(caught.value)
        with pytest.raises(StoreUnavailableError):
            await message_store.newest("lobby", 5)
        with pytest.raises(StoreUnavailableError):
            await message_store.after("lobby", "m0001", 5)
        with pytest.raises(StoreUnavailableError):
            await message_store.get("lobby", "m0001")
        with pytest.raises(StoreUnavailableError):
            await room_store.make_private("secret", (ANN, BOB))
        with pytest.raises(StoreUnavailableError):
            await room_store.get_private("secret")
    finally:
        await message_store.close()
        await room_store.close()


async def test_opening_against_a_stopped_server_is_unavailable(
    own_secantus: SecantusServer,
) -> None:
    url = own_secantus.url
    await own_secantus.stop()
    store = MongoMessageStore(url, "roomcast", server_selection_timeout=1.0)
    with pytest.raises(StoreUnavailableError):
        await store.open()
    assert await store.ping() is False
    await store.close()


async def test_a_store_recovers_when_the_server_comes_back(own_secantus: SecantusServer) -> None:
    store = MongoMessageStore(own_secantus.url, "roomcast", server_selection_timeout=1.0)
    await store.open()
    # The same port again, so that the store's URL still points at the server.
    again = SecantusServer(own_secantus.data_dir, port=own_secantus.port)
    try:
        await store.insert_many(msgs(1, 2))
        await own_secantus.stop()
        with pytest.raises(StoreUnavailableError):
            await store.newest("lobby", 5)

        await again.start()

        assert await store.ping() is True
        assert await store.newest("lobby", 5) == msgs(1, 2)
        assert await store.insert_many([msg(3)]) == [msg(3)]
    finally:
        await store.close()
        await again.stop()
