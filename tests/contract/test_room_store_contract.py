"""The `RoomStore` contract (roomcast.shared.store.base): every test body runs on
`InMemoryRoomStore` (`unit`) and on `MongoRoomStore` against a real SecantusDB (`integration`):
private rooms, name reservations that outlive a presence restart and end by themselves, and
room moderation (owners, mutes, bans) whose version grows with every change.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from roomcast.shared.errors import ProtocolError
from roomcast.shared.moderation import MAX_SANCTIONS, RoomModeration, RoomOwner, Sanction
from roomcast.shared.secantus import SecantusServer
from roomcast.shared.store.base import NameReservation, RoomMember, RoomStore
from roomcast.shared.store.memory import InMemoryRoomStore
from roomcast.shared.store.mongo import MongoRoomStore

NOW = 1_800_000_000.0
ANN = RoomMember("ann", "hash-ann")
BOB = RoomMember("bob", "hash-bob")
CAT = RoomMember("cat", "hash-cat")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secantus(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SecantusServer]:
    async with SecantusServer(tmp_path_factory.mktemp("secantus-rooms")) as server:
        yield server


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("mongo", marks=pytest.mark.integration),
    ]
)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "memory":
        yield "memory"
    else:
        server: SecantusServer = request.getfixturevalue("secantus")
        yield str(server.url)


@pytest.fixture
def db_name() -> str:
    return f"rooms_{uuid.uuid4().hex[:16]}"


def make(backend: str, db_name: str) -> RoomStore:
    return InMemoryRoomStore() if backend == "memory" else MongoRoomStore(backend, db_name)


@pytest_asyncio.fixture
async def store(backend: str, db_name: str) -> AsyncIterator[RoomStore]:
    chosen = make(backend, db_name)
    await chosen.open()
    try:
        yield chosen
    finally:
        await chosen.close()


def held(
    key: str, session_hash: str, expires: float, username: str | None = None
) -> NameReservation:
    return NameReservation(key, username or key, session_hash, expires)


# --- private rooms ---------------------------------------------------------------------------


async def test_the_first_pair_keeps_a_private_room(store: RoomStore) -> None:
    assert await store.get_private("dm") is None
    made = await store.make_private("dm", (ANN, BOB))
    assert made.members == (ANN, BOB)
    other = await store.make_private("dm", (ANN, CAT))
    assert other.members == (ANN, BOB)  # the existing pair, so the caller can refuse
    assert await store.get_private("dm") == made


# --- name reservations -----------------------------------------------------------------------


async def test_a_reservation_holds_until_it_expires(store: RoomStore) -> None:
    assert await store.get_reservation("alice", NOW) is None
    await store.reserve_name(held("alice", "h1", NOW + 600, "Alice"))
    found = await store.get_reservation("alice", NOW + 599.5)
    assert found == held("alice", "h1", NOW + 600, "Alice")
    assert found is not None and found.holds(NOW + 599.5) and not found.holds(NOW + 600)
    assert await store.get_reservation("alice", NOW + 600) is None
    assert await store.get_reservation("alicia", NOW) is None


async def test_reserving_a_key_again_replaces_it(store: RoomStore) -> None:
    await store.reserve_name(held("alice", "h1", NOW + 600))
    await store.reserve_name(held("alice", "h2", NOW + 60))
    assert await store.get_reservation("alice", NOW) == held("alice", "h2", NOW + 60)
    assert await store.get_reservation("alice", NOW + 100) is None  # the shorter one counts


async def test_purge_forgets_only_ended_reservations(store: RoomStore) -> None:
    await store.reserve_name(held("ann", "h1", NOW - 1))
    await store.reserve_name(held("bob", "h2", NOW))
    await store.reserve_name(held("cat", "h3", NOW + 1))
    assert await store.purge_reservations(NOW) == 2
    assert await store.purge_reservations(NOW) == 0
    assert await store.get_reservation("cat", NOW) == held("cat", "h3", NOW + 1)
    # an ended reservation is gone for good, whatever clock asks later
    assert await store.get_reservation("ann", NOW - 10) is None


async def test_the_reservations_in_force_come_in_one_query(store: RoomStore) -> None:
    """What a presence replica loads when it becomes active (services/presence/reservations.py)."""
    assert await store.reservations(NOW, 10) == []
    await store.reserve_name(held("ann", "h1", NOW - 1))  # ended
    await store.reserve_name(held("bob", "h2", NOW))  # ends now
    await store.reserve_name(held("cat", "h3", NOW + 1, "Cat"))
    await store.reserve_name(held("dan", "h4", NOW + 600))
    await store.reserve_name(held("dan", "h5", NOW + 60))  # replaced: the newest counts
    found = await store.reservations(NOW, 10)
    assert sorted(found, key=lambda r: r.key) == [
        held("cat", "h3", NOW + 1, "Cat"),
        held("dan", "h5", NOW + 60),
    ]
    assert await store.reservations(NOW + 1, 10) == [held("dan", "h5", NOW + 60)]


async def test_the_reservations_in_force_stop_at_the_limit(store: RoomStore) -> None:
    for n in range(5):
        await store.reserve_name(held(f"user{n}", f"h{n}", NOW + 600))
    some = await store.reservations(NOW, 3)
    assert len(some) == 3 and {r.key for r in some} <= {f"user{n}" for n in range(5)}
    assert len(await store.reservations(NOW, 6)) == 5
    assert await store.reservations(NOW, 0) == []


@pytest.mark.integration
async def test_reservations_outlive_the_store_client(
    secantus: SecantusServer, db_name: str
) -> None:
    """A presence restart (or another replica taking over) opens the store anew."""
    first = MongoRoomStore(str(secantus.url), db_name)
    await first.open()
    await first.reserve_name(held("alice", "h1", NOW + 600, "Alice"))
    await first.close()
    second = MongoRoomStore(str(secantus.url), db_name)
    await second.open()
    try:
        assert await second.get_reservation("alice", NOW) == held("alice", "h1", NOW + 600, "Alice")
    finally:
        await second.close()


async def test_keys_of_every_script_and_size(store: RoomStore) -> None:
    key = "\U00020000" * 16  # the longest username: 64 bytes of 4-byte letters
    await store.reserve_name(held(key, "h1", NOW + 10))
    assert await store.get_reservation(key, NOW) == held(key, "h1", NOW + 10)


# --- moderation (2.4) ------------------------------------------------------------------------

OWNER = RoomOwner(username="ann", identity="hash-ann")


def mute(key: str, until: float) -> Sanction:
    return Sanction(key=key, username=key.title(), until=until)


def ban(key: str) -> Sanction:
    return Sanction(key=key, username=key.title())


async def test_a_room_without_moderation_is_empty(store: RoomStore) -> None:
    assert await store.get_moderation("lobby") == RoomModeration(room="lobby")


async def test_the_first_owner_claim_wins(store: RoomStore) -> None:
    first = await store.claim_owner("lobby", OWNER)
    assert first.owner == OWNER and first.version == 1
    second = await store.claim_owner("lobby", RoomOwner(username="bob", identity="hash-bob"))
    assert second == first  # nothing changed: same owner, same version
    assert await store.get_moderation("lobby") == first
    assert (await store.get_moderation("other")).owner is None


async def test_mutes_replace_lift_and_expire(store: RoomStore) -> None:
    await store.claim_owner("lobby", OWNER)
    state = await store.add_sanction("lobby", "mute", mute("bob", NOW + 60), NOW)
    assert state.mutes == (mute("bob", NOW + 60),) and state.version == 2
    assert state.muted_until("BOB", NOW) == NOW + 60 and state.muted_until("bob", NOW + 60) is None
    state = await store.add_sanction("lobby", "mute", mute("bob", NOW + 5), NOW)
    assert state.mutes == (mute("bob", NOW + 5),)  # the new mute replaces the old one
    state = await store.add_sanction("lobby", "mute", mute("cat", NOW + 100), NOW + 10)
    assert state.mutes == (mute("cat", NOW + 100),)  # bob's ended mute is dropped
    lifted = await store.lift_sanction("lobby", "mute", "cat")
    assert lifted.mutes == () and lifted.version == state.version + 1
    again = await store.lift_sanction("lobby", "mute", "cat")
    assert again == lifted  # nothing to lift: no change
    assert (await store.get_moderation("lobby")).owner == OWNER


async def test_bans_hold_until_lifted(store: RoomStore) -> None:
    state = await store.add_sanction("lobby", "ban", ban("bob"), NOW)
    assert state.banned("Bob") and not state.banned("cat") and state.owner is None
    await store.add_sanction("lobby", "ban", ban("cat"), NOW + 10**9)  # bans never end
    stored = await store.get_moderation("lobby")
    assert stored.bans == (ban("bob"), ban("cat")) and stored.version == 2
    await store.lift_sanction("lobby", "ban", "bob")
    assert (await store.get_moderation("lobby")).bans == (ban("cat"),)
    assert (await store.get_moderation("elsewhere")).bans == ()


async def test_a_room_holds_a_bounded_number_of_bans(
    store: RoomStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the rule at a smaller bound: MAX_SANCTIONS writes of a growing document cost minutes
    limit = 25
    assert limit < MAX_SANCTIONS
    monkeypatch.setattr("roomcast.shared.store.base.MAX_SANCTIONS", limit)
    for i in range(limit):
        await store.add_sanction("big", "ban", ban(f"u{i}"), NOW)
    with pytest.raises(ProtocolError) as refused:
        await store.add_sanction("big", "ban", ban("one-more"), NOW)
    assert refused.value.code == "invalid" and "lift some" in refused.value.message
    await store.add_sanction("big", "ban", ban("u7"), NOW)  # a repeat replaces: still fits
    assert len((await store.get_moderation("big")).bans) == limit


@pytest.mark.integration
async def test_moderation_outlives_the_store_client(secantus: SecantusServer, db_name: str) -> None:
    """Presence restarts (or fails over) and finds every room's owner, mutes and bans."""
    first = MongoRoomStore(str(secantus.url), db_name)
    await first.open()
    await first.claim_owner("lobby", OWNER)
    await first.add_sanction("lobby", "ban", ban("bob"), NOW)
    made = await first.add_sanction("lobby", "mute", mute("cat", NOW + 60), NOW)
    await first.close()
    second = MongoRoomStore(str(secantus.url), db_name)
    await second.open()
    try:
        assert await second.get_moderation("lobby") == made
    finally:
        await second.close()
