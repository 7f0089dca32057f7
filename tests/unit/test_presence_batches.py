"""Joins batched between the gateway and presence (issue 11), and name reservations loaded once
per takeover: many joins of one turn go in one bus request and each gets its own answer (or
its own error), a join whose caller gave up is skipped, presence down fails every join of a
batch `unavailable`, and a presence that does not take batches is asked one join at a time."""

# ruff: noqa: F811 - pytest fixtures imported from the presence unit tests

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from roomcast.gateway.clients.presence import JoinBatcher, PresenceClient
from roomcast.presence.reservations import NameReservations
from roomcast.shared import rpc, topics
from roomcast.shared.bus import BusTimeoutError, BusUnavailableError, InMemoryBus, Message
from roomcast.shared.bus.base import RejectMessage
from roomcast.shared.config import Settings
from roomcast.shared.errors import ProtocolError
from roomcast.shared.moderation import Sanction
from roomcast.shared.names import username_key
from roomcast.shared.store.base import NameReservation, StoreUnavailableError
from roomcast.shared.store.memory import InMemoryRoomStore
from tests.unit.test_presence_units import (  # noqa: F401 - fixtures among them
    Clock,
    Presence,
    disconnect,
    join,
    presence,
    recorder,
    until,
)

pytestmark = pytest.mark.unit


class CountingBus(InMemoryBus):
    """Counts the requests sent, by routing key."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    async def request(self, routing_key: str, body: bytes, **kwargs: Any) -> bytes:
        self.requests.append(routing_key)
        return await super().request(routing_key, body, **kwargs)


@pytest.fixture
async def bus() -> Any:
    """The bus presence (the `presence` fixture) and the gateway's client share."""
    memory = CountingBus()
    await memory.connect()
    yield memory
    await memory.close()


def client(bus: InMemoryBus, timeout: float = 5.0) -> PresenceClient:
    return PresenceClient(bus, Settings(request_timeout=timeout), "g1")


async def learnt(gateway: PresenceClient) -> None:
    """One join answered singly tells the client that presence takes batches."""
    await gateway.join("c-zoe", "zoe", "h-zoe", "warmup")
    assert gateway.joins.takes_batches


async def outcome(awaitable: Any) -> Any:
    try:
        return await awaitable
    except (ProtocolError, BusUnavailableError) as exc:
        return exc


# --- batches ---------------------------------------------------------------------------------


async def test_joins_of_one_turn_go_in_one_request_and_each_gets_its_own_snapshot(
    bus: CountingBus, presence: Presence
) -> None:
    service = await presence()
    gateway = client(bus)
    await learnt(gateway)
    assert bus.requests == [topics.presence_request("join")]
    admissions = await asyncio.gather(
        *(gateway.join(f"c{n}", f"user{n}", f"h{n}", "lobby") for n in range(10))
    )
    assert bus.requests[1:] == [topics.presence_request("joins")]
    # judged in order: each snapshot holds the joiners before it and itself
    for n, admission in enumerate(admissions):
        assert admission.users == sorted(f"user{k}" for k in range(n + 1))
    assert service.state.users("lobby") == sorted(f"user{n}" for n in range(10))


async def test_a_batch_of_joins_is_announced_in_one_message_per_room_after_its_snapshots(
    bus: CountingBus, presence: Presence
) -> None:
    """One barrier per batch, not per join: the batch's `userJoin`s of a room go out in one
    message, and replayed on any joiner's snapshot they give the roster (the gateway drops
    those the snapshot already holds)."""
    received = await recorder(bus)
    messages: list[bytes] = []

    async def count(message: Message) -> None:
        messages.append(message.body)

    sub = await bus.subscribe(count)
    await sub.bind(topics.room_event("lobby", topics.PRESENCE_CHANGES))
    service = await presence()
    gateway = client(bus)
    await learnt(gateway)
    received.clear()
    admissions = await asyncio.gather(
        *(gateway.join(f"c{n}", f"user{n}", f"h{n}", "lobby") for n in range(10))
    )
    await until(lambda: len(received) == 10)
    assert len(messages) == 1 and messages[0].count(b"\n") == 9
    assert sorted(who for _, _, who in received) == [f"user{n}" for n in range(10)]
    for admission in admissions:
        listed = set(admission.users)
        for event, _, who in received:
            listed = listed | {who} if event == "userJoin" else listed - {who}
        assert sorted(listed) == service.state.users("lobby")


async def test_a_leave_before_a_batch_of_joins_is_not_cancelled_by_a_rejoin_in_it(
    bus: CountingBus, presence: Presence
) -> None:
    """bob leaves; then, in one batch, alice joins (her snapshot lacks bob) and bob is back.
    The leave is announced in a batch of its own, before the joins: coalesced with bob's
    rejoin it would vanish, and alice would never learn that bob is there."""
    received = await recorder(bus)
    service = await presence()
    service.announcer._tick = 10.0  # only barriers close batches here
    gateway = client(bus)
    await learnt(gateway)
    await gateway.join("c-bob", "bob", "h-bob", "lobby")
    leaving = asyncio.create_task(disconnect(bus, "c-bob"))
    await until(lambda: service.state.users("lobby") == [])  # his leave is in the open batch
    alice, bob = await asyncio.gather(
        gateway.join("c-alice", "alice", "h-alice", "lobby"),
        gateway.join("c-bob2", "bob", "h-bob", "lobby"),
    )
    await leaving
    assert bus.requests.count(topics.presence_request("joins")) == 2  # bob's, then these two
    assert alice.users == ["alice"] and bob.users == ["alice", "bob"]
    lobby = [(event, who) for event, room, who in received if room == "lobby"]
    assert lobby == [
        ("userJoin", "bob"),
        ("userLeave", "bob"),
        ("userJoin", "alice"),
        ("userJoin", "bob"),
    ]


async def test_each_join_of_a_batch_gets_its_own_error(
    bus: CountingBus, presence: Presence
) -> None:
    store = InMemoryRoomStore()
    await presence(store)
    await store.add_sanction(
        "lobby", "ban", Sanction(key=username_key("mal"), username="mal", by="x"), 0
    )
    await store.make_private("dm", (_member("ann", "ha"), _member("bob", "hb")))
    gateway = client(bus)
    await learnt(gateway)
    await gateway.join("c1", "alice", "h1", "main")
    answers = await asyncio.gather(
        outcome(gateway.join("c2", "ALICE", "h2", "main")),  # a look-alike of a live name
        outcome(gateway.join("c3", "mal", "hm", "lobby")),  # banned there
        outcome(gateway.join("c4", "cat", "hc", "dm")),  # private to another pair
        outcome(gateway.join("c5", "dan", "hd", "lobby")),
    )
    assert bus.requests.count(topics.presence_request("joins")) == 2  # alice's, then these
    codes = [a.code if isinstance(a, ProtocolError) else "ok" for a in answers]
    assert codes == ["username_taken", "banned", "room_private", "ok"]
    assert answers[3].users == ["dan"]


async def test_a_batch_waits_for_the_one_in_flight_then_goes_whole(
    bus: CountingBus, presence: Presence
) -> None:
    await presence()
    gateway = client(bus)
    gateway.joins._max_in_flight = 1
    await learnt(gateway)
    first = asyncio.create_task(gateway.join("c1", "ann", "ha", "lobby"))
    await asyncio.sleep(0)  # its batch is out
    await asyncio.sleep(0)
    later = [
        asyncio.create_task(gateway.join(f"c{n}", f"u{n}", f"h{n}", "lobby")) for n in range(2, 6)
    ]
    await asyncio.gather(first, *later)
    assert bus.requests.count(topics.presence_request("joins")) == 2


async def test_a_join_whose_caller_went_away_before_it_was_sent_is_not_sent(
    bus: CountingBus, presence: Presence
) -> None:
    service = await presence()
    gateway = client(bus)
    await learnt(gateway)
    gone = asyncio.create_task(gateway.join("c1", "ann", "ha", "lobby"))
    kept = asyncio.create_task(gateway.join("c2", "bob", "hb", "lobby"))
    await asyncio.sleep(0)  # both queued, not sent yet
    gone.cancel()
    assert (await kept).users == ["bob"]
    assert service.state.users("lobby") == ["bob"]


def batch_delivery(joins: list[rpc.BatchedJoin]) -> Message:
    deadline = max(j.deadline for j in joins)
    body = rpc.encode(rpc.JoinBatch(joins=joins))
    return Message(topics.presence_request("joins"), body, {rpc.DEADLINE_HEADER: f"{deadline}"})


def batched(conn: str, username: str, deadline: float, room: str = "main") -> rpc.BatchedJoin:
    return rpc.BatchedJoin(
        gateway="g1", conn=conn, username=username, room=room, session_hash="h-" + username,
        deadline=deadline,
    )  # fmt: skip


async def test_a_batch_half_expired_admits_only_the_joins_still_awaited(
    bus: InMemoryBus, presence: Presence
) -> None:
    wall = Clock(time.time())
    service = await presence(deadlines=wall)
    joins = [
        batched("c1", "ann", wall.now - 1),
        batched("c2", "bob", wall.now + 5),
        batched("c3", "cat", wall.now + 0.01),  # within the margin: no reply could reach it
        batched("c4", "dan", wall.now + 5),
    ]
    body = rpc.encode(rpc.JoinBatch(joins=joins))
    raw = await bus.request(topics.presence_request("joins"), body, timeout=5)
    answers = rpc.outcomes(raw, 4)
    assert [a.code if isinstance(a, ProtocolError) else "ok" for a in answers] == [
        "unavailable",
        "ok",
        "unavailable",
        "ok",
    ]
    assert answers[3]["users"] == ["bob", "dan"]
    assert service.state.users("main") == ["bob", "dan"]
    # every join of it expired: dropped unanswered, nothing admitted
    await service._handle(batch_delivery([batched("c5", "eve", wall.now - 1)]))
    assert service.state.users("main") == ["bob", "dan"]


async def test_presence_down_fails_every_join_of_the_batch_and_asks_singly_again(
    bus: CountingBus, presence: Presence
) -> None:
    service = await presence()
    gateway = client(bus, timeout=0.3)
    await learnt(gateway)
    await service.stop()
    answers = await asyncio.gather(
        *(outcome(gateway.join(f"c{n}", f"u{n}", f"h{n}", "lobby")) for n in range(5))
    )
    # a timeout each (BusUnavailableError: the join is refused `unavailable` and forgotten)
    assert all(isinstance(a, BusTimeoutError) for a in answers)
    assert len({id(a) for a in answers}) == 5  # each caller raises its own
    assert bus.requests.count(topics.presence_request("joins")) == 1
    assert not gateway.joins.takes_batches  # maybe an older replica took over: ask singly


async def test_a_batch_to_an_old_presence_times_out_then_joins_go_singly(
    bus: CountingBus, presence: Presence
) -> None:
    """A newer replica died and an older one took over (a rolling upgrade): it rejects the
    batch it does not know, and answers single joins without saying it takes batches."""
    service = await presence()
    gateway = client(bus, timeout=0.3)
    await learnt(gateway)
    await service.stop()
    old = await bus.consume(
        topics.presence_queue("old"), topics.PRESENCE_PATTERNS, old_presence(bus)
    )
    try:
        refused = await outcome(gateway.join("c1", "ann", "ha", "lobby"))
        assert isinstance(refused, BusTimeoutError)
        again = await gateway.join("c1", "ann", "ha", "lobby")
        assert again.users == ["ann"]
        assert not gateway.joins.takes_batches
        await asyncio.gather(*(gateway.join(f"c{n}", f"u{n}", f"h{n}", "x") for n in range(3)))
        assert bus.requests[-3:] == [topics.presence_request("join")] * 3
    finally:
        await old.close()


def old_presence(bus: InMemoryBus) -> Any:
    async def handle(message: Message) -> None:
        op = message.routing_key.rpartition(".")[2]
        if op != "join":
            raise RejectMessage(f"unknown presence op {op!r}")
        req = rpc.decode(rpc.JoinRequest, message)
        await bus.reply(message, rpc.result({"users": [req.username], "private": False}))

    return handle


async def test_a_new_presence_answers_a_single_join_and_says_it_takes_batches(
    bus: InMemoryBus, presence: Presence
) -> None:
    await presence()
    reply = await join(bus, "c1", "alice", "h1")
    assert reply["users"] == ["alice"] and reply[rpc.BATCHES] is True


async def test_a_malformed_batch_is_rejected_and_presence_goes_on(
    bus: InMemoryBus, presence: Presence
) -> None:
    service = await presence()
    with pytest.raises(RejectMessage):
        await service._handle(Message(topics.presence_request("joins"), b'{"joins": []}'))
    assert (await join(bus, "c1", "alice", "h1"))["users"] == ["alice"]


async def test_a_batch_never_exceeds_its_cap(bus: CountingBus, presence: Presence) -> None:
    await presence()
    gateway = client(bus)
    gateway.joins._max_batch = 3
    await learnt(gateway)
    await asyncio.gather(*(gateway.join(f"c{n}", f"u{n}", f"h{n}", "lobby") for n in range(7)))
    assert bus.requests.count(topics.presence_request("joins")) == 3


def test_the_batcher_starts_asking_singly() -> None:
    assert not JoinBatcher(InMemoryBus(), 1.0).takes_batches


# --- reservations loaded once ------------------------------------------------------------------


class CountingStore(InMemoryRoomStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.loads = 0
        self.down = False
        self.gate: asyncio.Event | None = None

    async def get_reservation(self, key: str, now: float) -> NameReservation | None:
        self.reads += 1
        if self.down:
            raise StoreUnavailableError("down")
        return await super().get_reservation(key, now)

    async def reservations(self, now: float, limit: int) -> list[NameReservation]:
        self.loads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise StoreUnavailableError("down")
        return await super().reservations(now, limit)


def kept(key: str, session_hash: str, expires: float) -> NameReservation:
    return NameReservation(username_key(key), key, session_hash, expires)


async def test_fresh_names_need_no_read_after_the_takeover_and_old_reservations_hold(
    bus: InMemoryBus, presence: Presence
) -> None:
    store = CountingStore()
    await store.reserve_name(kept("carol", "h-carol", time.time() + 600))  # the last replica's
    service = await presence(store)
    await asyncio.gather(*(join(bus, f"c{n}", f"user{n}", f"h{n}", "lobby") for n in range(20)))
    assert store.reads == 0 and store.loads == 1 and service.names.loaded
    with pytest.raises(ProtocolError) as caught:
        await join(bus, "c-carol", "carol", "h-other")
    assert caught.value.code == "username_taken"
    # a name this replica reserved since holds too
    await disconnect(bus, "c1")
    with pytest.raises(ProtocolError):
        await join(bus, "c99", "user1", "h-other")
    assert store.reads == 0


async def test_a_join_during_the_load_waits_for_it() -> None:
    store = CountingStore()
    await store.reserve_name(kept("carol", "h-carol", 2_000.0))
    store.gate = asyncio.Event()
    names = NameReservations(store, 600, lambda: 1_000.0)
    names.take_over()
    names.prefetch(username_key("carol"))  # no read: the load answers every name
    asking = asyncio.create_task(names.holder(username_key("carol")))
    await asyncio.sleep(0.01)
    assert not asking.done()
    store.gate.set()
    assert await asking == kept("carol", "h-carol", 2_000.0)
    assert store.reads == 0


async def test_a_store_down_at_takeover_reads_names_one_by_one_and_retries_the_load() -> None:
    store = CountingStore()
    store.down = True
    names = NameReservations(store, 600, lambda: 1_000.0, retry_seconds=0.01)
    names.take_over()
    assert await names.holder(username_key("ann")) is None  # let through, unchecked
    assert store.reads == 1 and not names.loaded
    store.down = False
    await store.reserve_name(kept("bob", "h-bob", 2_000.0))
    await until(lambda: names.loaded)
    reads = store.reads
    assert await names.holder(username_key("bob")) == kept("bob", "h-bob", 2_000.0)
    assert await names.holder(username_key("ann")) is None
    assert store.reads == reads
    names.stop()


async def test_what_this_replica_reserves_during_the_load_outranks_the_stores_older_word() -> None:
    store = CountingStore()
    await store.reserve_name(kept("ann", "h-old", 1_500.0))  # another replica's, older
    store.gate = asyncio.Event()
    names = NameReservations(store, 600, lambda: 1_000.0)
    names.take_over()
    await asyncio.sleep(0)
    names.reserve(username_key("ann"), "ann", "h-new")  # not persisted yet
    store.gate.set()
    await until(lambda: names.loaded)
    assert await names.holder(username_key("ann")) == kept("ann", "h-new", 1_600.0)


async def test_too_many_reservations_to_hold_fall_back_to_reads_per_name() -> None:
    store = CountingStore()
    for n in range(3):
        await store.reserve_name(kept(f"u{n}", f"h{n}", 2_000.0))
    names = NameReservations(store, 600, lambda: 1_000.0, load_cap=2)
    names.take_over()
    assert await names.holder(username_key("u1")) == kept("u1", "h1", 2_000.0)
    assert not names.loaded and store.reads == 1


async def test_a_refresh_sees_what_a_deposed_replica_persisted_late() -> None:
    store = CountingStore()
    names = NameReservations(store, 600, lambda: 1_000.0)
    names.take_over()
    await until(lambda: names.loaded)
    await store.reserve_name(kept("ann", "h-ann", 1_500.0))  # its writer was still retrying
    assert await names.holder(username_key("ann")) is None
    names.refresh()
    await until(lambda: store.loads == 2 and names._loading is None)
    assert await names.holder(username_key("ann")) == kept("ann", "h-ann", 1_500.0)
    assert store.reads == 0


async def test_a_replica_that_never_took_over_does_not_refresh() -> None:
    store = CountingStore()
    names = NameReservations(store, 600, lambda: 1_000.0)
    names.refresh()
    await asyncio.sleep(0)
    assert store.loads == 0


def _member(username: str, session_hash: str) -> Any:
    from roomcast.shared.store.base import RoomMember

    return RoomMember(username, session_hash)
