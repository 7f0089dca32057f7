"""The `MessageStore` contract (roomcast.shared.store.base): every test body runs on
`InMemoryMessageStore` (`unit`) and on `MongoMessageStore` against a real SecantusDB
(`integration`), so the two stores behave alike: revs, changes, refusals, reads, read markers.

Revs are compared by order, never by density: a store may leave gaps (PROTOCOL.md 2.3 only
asks that they grow).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import pytest_asyncio

from roomcast.shared.errors import ProtocolError
from roomcast.shared.models import ChatMessage
from roomcast.shared.secantus import SecantusServer
from roomcast.shared.store.base import UNREAD_CAP, Inserted, MessageStore, ReadState, ReadTail
from roomcast.shared.store.memory import InMemoryMessageStore
from roomcast.shared.store.mongo import MongoMessageStore

ROOM = "lobby"
ANN, BOB, CAT = "hash-ann", "hash-bob", "hash-cat"  # author identities (session hashes)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secantus(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SecantusServer]:
    """One SecantusDB for this module's Mongo half; each test gets a database of its own."""
    async with SecantusServer(tmp_path_factory.mktemp("secantus-contract")) as server:
        yield server


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("mongo", marks=pytest.mark.integration),
    ]
)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """ "memory", or the URL of the SecantusDB (started only when a Mongo test runs)."""
    if request.param == "memory":
        yield "memory"
    else:
        server: SecantusServer = request.getfixturevalue("secantus")
        yield str(server.url)


Reopen = Callable[[], Awaitable[MessageStore]]


@pytest_asyncio.fixture
async def stores(backend: str) -> AsyncIterator[Reopen]:
    """Opens the test's store: a new `MongoMessageStore` on the test's own database each time
    (what a restarted history gets), or the one `InMemoryMessageStore`, which has nothing else
    to come back to. All are closed after the test."""
    database = f"contract_{uuid.uuid4().hex[:16]}"
    memory = InMemoryMessageStore()
    opened: list[MessageStore] = []

    async def reopen() -> MessageStore:
        chosen = memory if backend == "memory" else MongoMessageStore(backend, database)
        await chosen.open()
        opened.append(chosen)
        return chosen

    try:
        yield reopen
    finally:
        for each in opened:
            await each.close()


@pytest_asyncio.fixture
async def store(stores: Reopen) -> MessageStore:
    return await stores()


def msg(n: int, *, room: str = ROOM, username: str = "ann", rev: int = 0) -> ChatMessage:
    return ChatMessage(
        id=f"m{n:04d}", username=username, body=f"hello {n}", time=1_700_000_000_000 + n, room=room,
        rev=rev,
    )  # fmt: skip


async def put(
    store: MessageStore, *ns: int, username: str = "ann", author: str | None = ANN, rev: int = 0
) -> list[ChatMessage]:
    messages = [msg(n, username=username, rev=rev) for n in ns]
    return await store.insert_many(messages, [author] * len(messages))


async def room_max(store: MessageStore, room: str = ROOM) -> int:
    return max((m.rev for m in await store.since_rev(room, -1, 10_000)), default=0)


async def refused(code: str, awaitable: object) -> None:
    with pytest.raises(ProtocolError) as caught:
        await awaitable  # type: ignore[misc]
    assert caught.value.code == code


# --- revs of new messages ------------------------------------------------------------------


async def test_insert_gives_growing_revs_in_list_order(store: MessageStore) -> None:
    stored = await put(store, 3, 1, 2)
    assert [m.id for m in stored] == ["m0003", "m0001", "m0002"]
    revs = [m.rev for m in stored]
    assert revs == sorted(revs) and len(set(revs)) == 3 and revs[0] >= 1
    assert await store.newest(ROOM, 10) == stored


async def test_a_larger_proposal_is_kept_a_smaller_one_raised(store: MessageStore) -> None:
    [high] = await put(store, 1, rev=5_000)
    assert high.rev == 5_000
    [low] = await put(store, 2, rev=7)
    assert low.rev == 5_001
    within, above = await store.insert_many([msg(3, rev=4_000), msg(4, rev=9_000)])
    assert (within.rev, above.rev) == (5_002, 9_000)
    assert await store.get(ROOM, "m0004") == msg(4, rev=9_000)


async def test_rooms_have_revs_of_their_own(store: MessageStore) -> None:
    await put(store, 1, rev=5_000)
    [other] = await store.insert_many([msg(1, room="other", rev=3)])
    assert other.rev == 3
    [mine] = await put(store, 2, rev=3)
    assert mine.rev == 5_001


async def test_a_repeat_returns_the_stored_message_unchanged(store: MessageStore) -> None:
    [first] = await put(store, 1, rev=10)
    changed = msg(1, rev=99).model_copy(update={"body": "other"})
    stored = await store.insert_many([msg(2), changed, msg(3)])
    assert stored[1] == first
    assert stored[0].rev < stored[2].rev and stored[0].rev > first.rev
    assert [m.id for m in await store.newest(ROOM, 10)] == ["m0001", "m0002", "m0003"]
    assert await store.get(ROOM, "m0001") == first


async def test_the_author_is_stored_beside_not_in_the_message(store: MessageStore) -> None:
    [stored] = await put(store, 1, author=ANN)
    got = await store.get(ROOM, "m0001")
    assert got == stored and "author" not in got.wire()
    # ...and it counts: the same username under another identity is not the author
    await refused(
        "forbidden", store.edit(ROOM, "m0001", author=BOB, username="ann", body="x", at=1, rev=0)
    )


async def test_insert_without_authors(store: MessageStore) -> None:
    stored = await store.insert_many([msg(1), msg(2)])
    assert [m.rev for m in stored] == sorted(m.rev for m in stored)


# --- edit -------------------------------------------------------------------------------------


async def test_edit_by_the_author(store: MessageStore) -> None:
    await put(store, 1, 2)
    top = await room_max(store)
    edited = await store.edit(
        ROOM, "m0001", author=ANN, username="ann", body="fixed", at=1234, rev=1
    )
    assert (edited.body, edited.edited, edited.deleted) == ("fixed", 1234, None)
    assert edited.rev == top + 1  # a proposal below the room's largest rev is raised
    assert edited.wire()["edited"] == 1234
    assert await store.get(ROOM, "m0001") == edited
    assert [m.id for m in await store.newest(ROOM, 10)] == ["m0001", "m0002"]  # order kept
    again = await store.edit(
        ROOM, "m0001", author=ANN, username="ann", body="again", at=1300, rev=10**9
    )
    assert again.rev == 10**9 and again.body == "again"


async def test_an_edit_to_the_same_body_changes_nothing(store: MessageStore) -> None:
    [stored] = await put(store, 1)
    same = await store.edit(
        ROOM, "m0001", author=ANN, username="ann", body=stored.body, at=99, rev=10**9
    )
    assert same == stored and await room_max(store) == stored.rev


async def test_edit_refusals(store: MessageStore) -> None:
    await put(store, 1)
    await refused(
        "forbidden", store.edit(ROOM, "m0001", author=BOB, username="bob", body="x", at=1, rev=0)
    )
    await refused(
        "not_found", store.edit(ROOM, "nope0000", author=ANN, username="ann", body="x", at=1, rev=0)
    )
    await refused(
        "not_found", store.edit("other", "m0001", author=ANN, username="ann", body="x", at=1, rev=0)
    )
    await store.delete(ROOM, "m0001", author=ANN, username="ann", rev=0)
    await refused(  # a deleted message is gone for editing: its tombstone only keeps its place
        "not_found", store.edit(ROOM, "m0001", author=ANN, username="ann", body="x", at=1, rev=0)
    )
    assert (await store.get(ROOM, "m0001")).body == ""  # type: ignore[union-attr]


async def test_without_a_stored_author_the_username_decides(store: MessageStore) -> None:
    await put(store, 1, author=None)
    await refused(
        "forbidden", store.edit(ROOM, "m0001", author=ANN, username="bob", body="x", at=1, rev=0)
    )
    edited = await store.edit(ROOM, "m0001", author=CAT, username="ann", body="x", at=1, rev=0)
    assert edited.body == "x"


# --- delete -----------------------------------------------------------------------------------


async def test_delete_leaves_a_tombstone_in_every_read(store: MessageStore) -> None:
    await put(store, 1, 2, 3)
    await store.react(ROOM, "m0002", username="bob", emoji="👍", add=True, rev=0)
    top = await room_max(store)
    gone = await store.delete(ROOM, "m0002", author=ANN, username="ann", rev=0)
    assert (gone.deleted, gone.body, gone.reactions, gone.rev) == (True, "", None, top + 1)
    assert gone.wire() == {
        "id": "m0002", "username": "ann", "body": "", "time": msg(2).time, "room": ROOM,
        "rev": gone.rev, "deleted": True,
    }  # fmt: skip
    newest = await store.newest(ROOM, 10)
    assert [m.id for m in newest] == ["m0001", "m0002", "m0003"] and newest[1] == gone
    assert await store.before(ROOM, "m0003", 10) == newest[:2]
    assert (await store.before(ROOM, None, 10) or [])[1] == gone
    assert (await store.after(ROOM, "m0001", 10) or [])[0] == gone
    assert await store.get(ROOM, "m0002") == gone
    assert (await store.since_rev(ROOM, top, 10)) == [gone]


async def test_delete_rules(store: MessageStore) -> None:
    await put(store, 1, 2)
    await refused("forbidden", store.delete(ROOM, "m0001", author=BOB, username="bob", rev=0))
    await refused("not_found", store.delete(ROOM, "nope0000", author=ANN, username="ann", rev=0))
    by_moderator = await store.delete(
        ROOM, "m0001", author=BOB, username="bob", moderator=True, rev=0
    )
    assert by_moderator.deleted is True
    again = await store.delete(ROOM, "m0001", author=ANN, username="ann", rev=10**9)
    assert again == by_moderator  # a second delete changes nothing
    await refused("forbidden", store.delete(ROOM, "m0001", author=BOB, username="bob", rev=0))
    own = await store.delete(ROOM, "m0002", author=ANN, username="ann", rev=10**9)
    assert own.rev == 10**9


# --- reactions --------------------------------------------------------------------------------


async def test_reactions_add_and_remove(store: MessageStore) -> None:
    await put(store, 1)
    await store.react(ROOM, "m0001", username="cat", emoji="👍", add=True, rev=0)
    await store.react(ROOM, "m0001", username="ann", emoji="👍", add=True, rev=0)
    both = await store.react(ROOM, "m0001", username="bob", emoji="a.b$", add=True, rev=0)
    assert both.reactions == {"👍": ["ann", "cat"], "a.b$": ["bob"]}
    assert both.wire()["reactions"] == {"👍": ["ann", "cat"], "a.b$": ["bob"]}
    assert await store.get(ROOM, "m0001") == both
    fewer = await store.react(ROOM, "m0001", username="bob", emoji="a.b$", add=False, rev=0)
    assert fewer.reactions == {"👍": ["ann", "cat"]} and fewer.rev > both.rev
    await store.react(ROOM, "m0001", username="ann", emoji="👍", add=False, rev=0)
    last = await store.react(ROOM, "m0001", username="cat", emoji="👍", add=False, rev=0)
    assert last.reactions is None and "reactions" not in last.wire()
    assert await store.get(ROOM, "m0001") == last


async def test_a_reaction_that_changes_nothing_keeps_the_rev(store: MessageStore) -> None:
    await put(store, 1)
    added = await store.react(ROOM, "m0001", username="bob", emoji="👍", add=True, rev=0)
    assert (
        await store.react(ROOM, "m0001", username="bob", emoji="👍", add=True, rev=10**9) == added
    )
    assert (
        await store.react(ROOM, "m0001", username="cat", emoji="👍", add=False, rev=10**9) == added
    )
    assert (
        await store.react(ROOM, "m0001", username="cat", emoji="🎉", add=False, rev=10**9) == added
    )
    assert await room_max(store) == added.rev


async def test_at_most_twenty_distinct_emoji(store: MessageStore) -> None:
    await put(store, 1)
    for i in range(20):
        await store.react(ROOM, "m0001", username="bob", emoji=f"e{i}", add=True, rev=0)
    await refused(
        "invalid", store.react(ROOM, "m0001", username="bob", emoji="e20", add=True, rev=0)
    )
    more = await store.react(ROOM, "m0001", username="cat", emoji="e3", add=True, rev=0)
    assert more.reactions is not None and len(more.reactions) == 20
    assert more.reactions["e3"] == ["bob", "cat"]
    await refused(
        "invalid",
        store.react(ROOM, "m0001", username="bob", emoji="x", add=True, rev=0, max_distinct=3),
    )


async def test_reaction_refusals(store: MessageStore) -> None:
    await put(store, 1)
    await refused(
        "not_found", store.react(ROOM, "nope0000", username="bob", emoji="👍", add=True, rev=0)
    )
    await refused(
        "not_found", store.react("other", "m0001", username="bob", emoji="👍", add=True, rev=0)
    )
    await store.delete(ROOM, "m0001", author=ANN, username="ann", rev=0)
    await refused(
        "not_found", store.react(ROOM, "m0001", username="bob", emoji="👍", add=True, rev=0)
    )


# --- since_rev --------------------------------------------------------------------------------


async def test_since_rev_is_every_change_in_rev_order(store: MessageStore) -> None:
    first = await put(store, 1, 2, 3)
    seen = first[-1].rev
    await put(store, 4)
    await store.edit(ROOM, "m0001", author=ANN, username="ann", body="new", at=5, rev=0)
    await store.react(ROOM, "m0002", username="bob", emoji="👍", add=True, rev=0)
    await store.react(ROOM, "m0001", username="bob", emoji="👍", add=True, rev=0)

    changed = await store.since_rev(ROOM, seen, 10)
    assert [m.id for m in changed] == ["m0004", "m0002", "m0001"]  # each once, by its last rev
    assert [m.rev for m in changed] == sorted(m.rev for m in changed)
    assert changed[2].body == "new" and changed[2].reactions == {"👍": ["bob"]}
    assert [m.id for m in await store.since_rev(ROOM, seen, 2)] == ["m0004", "m0002"]
    assert [m.id for m in await store.since_rev(ROOM, 0, 10)] == [
        "m0003",
        "m0004",
        "m0002",
        "m0001",
    ]
    assert await store.since_rev(ROOM, changed[-1].rev, 10) == []
    assert await store.since_rev("other", 0, 10) == []
    assert await store.since_rev(ROOM, 0, 0) == []


# --- read markers -----------------------------------------------------------------------------


async def test_a_marker_only_moves_forward(store: MessageStore) -> None:
    await put(store, 1, 2, 3, username="bob", author=BOB)
    assert await store.read_state(ROOM, ANN, "ann") == ReadState(None, 3)
    assert await store.mark_read(ROOM, ANN, "m0002") == "m0002"
    assert await store.read_state(ROOM, ANN, "ann") == ReadState("m0002", 1)
    assert await store.mark_read(ROOM, ANN, "m0001") == "m0002"  # never back
    assert await store.mark_read(ROOM, ANN, "m0002") == "m0002"
    assert await store.mark_read(ROOM, ANN, "m0003") == "m0003"
    assert await store.read_state(ROOM, ANN, "ann") == ReadState("m0003", 0)
    assert await store.read_state(ROOM, CAT, "cat") == ReadState(None, 3)  # markers are per reader
    assert await store.read_state("other", ANN, "ann") == ReadState(None, 0)


async def test_markers_follow_stored_order_not_revs(store: MessageStore) -> None:
    await put(store, 1, 2, username="bob", author=BOB)
    # m0001's rev now tops m0002's, but it stays before it in the room
    await store.edit(ROOM, "m0001", author=BOB, username="bob", body="later", at=1, rev=0)
    assert await store.mark_read(ROOM, ANN, "m0002") == "m0002"
    assert await store.mark_read(ROOM, ANN, "m0001") == "m0002"
    assert await store.read_state(ROOM, ANN, "ann") == ReadState("m0002", 0)


async def test_mark_read_of_an_unknown_message(store: MessageStore) -> None:
    await put(store, 1)
    await refused("not_found", store.mark_read(ROOM, ANN, "nope0000"))
    await refused("not_found", store.mark_read("other", ANN, "m0001"))
    assert await store.read_state(ROOM, ANN, "ann") == ReadState(None, 0)


async def test_unread_counts_others_not_deleted(store: MessageStore) -> None:
    await put(store, 1, username="bob", author=BOB)
    await store.mark_read(ROOM, ANN, "m0001")
    await put(store, 2, 3, username="ann", author=ANN)
    await put(store, 4, 5, 6, username="bob", author=BOB)
    await store.delete(ROOM, "m0005", author=BOB, username="bob", rev=0)
    assert await store.read_state(ROOM, ANN, "ann") == ReadState("m0001", 2)
    assert await store.read_state(ROOM, BOB, "bob") == ReadState(None, 2)
    assert (await store.read_state(ROOM, CAT, None)).unread == 5
    # a deleted message can still hold a marker
    assert await store.mark_read(ROOM, ANN, "m0005") == "m0005"
    assert await store.read_state(ROOM, ANN, "ann") == ReadState("m0005", 1)


async def test_unread_is_capped(store: MessageStore) -> None:
    await store.insert_many([msg(n, username="bob") for n in range(UNREAD_CAP + 5)])
    assert await store.read_state(ROOM, ANN, "ann") == ReadState(None, UNREAD_CAP)
    await store.mark_read(ROOM, ANN, "m0003")
    assert await store.read_state(ROOM, ANN, "ann") == ReadState("m0003", UNREAD_CAP)
    await store.mark_read(ROOM, ANN, "m0010")
    assert await store.read_state(ROOM, ANN, "ann") == ReadState("m0010", UNREAD_CAP - 6)


async def test_insert_new_says_which_it_stored(store: MessageStore) -> None:
    await put(store, 1, 2)
    inserted = await store.insert_new([msg(2), msg(3), msg(3), msg(1), msg(4)], [ANN] * 5)
    assert [m.id for m in inserted.messages] == ["m0002", "m0003", "m0003", "m0001", "m0004"]
    assert inserted.fresh == [False, True, False, False, True]
    assert inserted.messages[1] == inserted.messages[2]  # the repeat is the first, as stored
    again = await store.insert_new([msg(4)])
    assert again.fresh == [False] and again.messages == [inserted.messages[4]]
    assert await store.insert_new([]) == Inserted([], [])


async def test_read_tail_holds_the_markers_and_the_newest(store: MessageStore) -> None:
    await put(store, 1, 2, username="bob", author=BOB)
    await put(store, 3, username="ann", author=ANN)
    await put(store, 4, username="bob", author=BOB)
    await store.delete(ROOM, "m0004", author=BOB, username="bob", rev=0)
    await store.mark_read(ROOM, ANN, "m0002")
    await store.mark_read(ROOM, CAT, "m0004")
    whole = await store.read_tail(ROOM, 10)
    assert whole.floor is None
    assert [(e.id, e.username, e.deleted) for e in whole.messages] == [
        ("m0001", "bob", False),
        ("m0002", "bob", False),
        ("m0003", "ann", False),
        ("m0004", "bob", True),
    ]
    seqs = [e.seq for e in whole.messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert whole.markers == {ANN: (seqs[1], "m0002"), CAT: (seqs[3], "m0004")}

    part = await store.read_tail(ROOM, 2)
    assert [e.id for e in part.messages] == ["m0003", "m0004"]
    assert part.floor == seqs[1]  # the newest message left out
    assert part.markers == whole.markers
    assert (await store.read_tail(ROOM, 0)).messages == []
    assert await store.read_tail("empty", 5) == ReadTail({}, [], None)


# --- after a restart --------------------------------------------------------------------------


async def test_changes_markers_and_revs_outlive_the_store(stores: Reopen) -> None:
    """What a restarted history finds: every change in place, the markers where they were, and
    revs that go on growing (a low proposal is raised above what the room held)."""
    first = await stores()
    await put(first, 1, 2, 3, username="bob", author=BOB)
    edited = await first.edit(ROOM, "m0001", author=BOB, username="bob", body="e", at=9, rev=0)
    gone = await first.delete(ROOM, "m0002", author=BOB, username="bob", rev=0)
    liked = await first.react(ROOM, "m0003", username="ann", emoji="👍", add=True, rev=0)
    await first.mark_read(ROOM, ANN, "m0002")
    top = await room_max(first)
    await first.close()

    again = await stores()
    assert await again.newest(ROOM, 10) == [edited, gone, liked]
    assert await again.since_rev(ROOM, 0, 10) == [edited, gone, liked]
    assert await again.read_state(ROOM, ANN, "ann") == ReadState("m0002", 1)
    assert await again.mark_read(ROOM, ANN, "m0001") == "m0002"  # still never back
    # the author is still known after the restart, and the next rev is above the old ones
    await refused(
        "forbidden", again.edit(ROOM, "m0003", author=ANN, username="bob", body="x", at=1, rev=0)
    )
    later = await again.edit(ROOM, "m0003", author=BOB, username="bob", body="x", at=1, rev=1)
    assert later.rev > top and later.reactions == {"👍": ["ann"]}
    [new] = await put(again, 4, rev=2)
    assert new.rev > later.rev
    await refused(
        "not_found",
        again.react(ROOM, "m0002", username="ann", emoji="👍", add=True, rev=0),
    )


# --- a writer that takes over ---------------------------------------------------------------


async def test_a_writer_that_took_over_goes_on_above_the_first(stores: Reopen) -> None:
    """Two writers in turn (another history replica took over, then this one came back and
    forgot its counters): stored order and revs keep growing across them, with new messages
    and changes alike, although each hands counters out from memory between reservations."""
    first = await stores()
    [m1] = await put(first, 1)
    second = await stores()
    [m2] = await put(second, 2)
    edited = await second.edit(ROOM, "m0001", author=ANN, username="ann", body="e", at=5, rev=0)
    first.forget_counters()
    [m3] = await put(first, 3)
    liked = await first.react(ROOM, "m0002", username="bob", emoji="👍", add=True, rev=0)
    assert [m.id for m in await first.newest(ROOM, 10)] == ["m0001", "m0002", "m0003"]
    assert [m.id for m in await second.after(ROOM, "m0001", 10) or []] == ["m0002", "m0003"]
    assert m1.rev < m2.rev < edited.rev < m3.rev < liked.rev
    assert [m.id for m in await second.since_rev(ROOM, m2.rev, 10)] == ["m0001", "m0003", "m0002"]


async def test_a_repeat_found_by_the_store_keeps_its_place(stores: Reopen) -> None:
    """A repeat of a message that another writer stored (a redelivery after a takeover):
    the stored message comes back unchanged, and what follows is stored after it."""
    first = await stores()
    [stored] = await put(first, 1, rev=7)
    second = await stores()
    inserted = await second.insert_new([msg(1, rev=99), msg(2)], [ANN, ANN])
    assert inserted.messages[0] == stored and inserted.fresh == [False, True]
    assert inserted.messages[1].rev > stored.rev
    assert await second.newest(ROOM, 10) == [stored, inserted.messages[1]]
