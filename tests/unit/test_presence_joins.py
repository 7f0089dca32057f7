"""Presence's join path under a storm (issue 11): requests whose caller gave up are dropped and
counted, and the store answers a join needs are cached and read ahead without ever admitting
someone the store would refuse (private rooms, bans), also right after a change."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

from roomcast.presence.readahead import ReadAhead
from roomcast.presence.service import PresenceService
from roomcast.shared import rpc, topics
from roomcast.shared.bus import BusTimeoutError, InMemoryBus, Message
from roomcast.shared.moderation import ModerateRequest, RoomModeration, Sanction, SanctionKind
from roomcast.shared.store.base import PrivateRoom, RoomMember, StoreUnavailableError
from roomcast.shared.store.memory import InMemoryRoomStore
from tests.unit import test_presence_units as units
from tests.unit.test_presence_units import Presence, ask, join, recorder, refused_code, until

pytestmark = pytest.mark.unit

bus = units.bus  # the fixtures of presence's other tests
presence = units.presence


class Wall:
    """Presence's clock for deadlines, stepped by the test; it starts at the real time, which
    `rpc.call` stamps requests with."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class CountingStore(InMemoryRoomStore):
    """Counts the reads a join makes."""

    def __init__(self) -> None:
        super().__init__()
        self.private_reads = 0
        self.reservation_reads = 0

    async def get_private(self, room: str) -> PrivateRoom | None:
        self.private_reads += 1
        await asyncio.sleep(0)  # a real store answers later: let other deliveries run
        return await super().get_private(room)

    async def get_reservation(self, key: str, now: float) -> Any:
        self.reservation_reads += 1
        return await super().get_reservation(key, now)


def join_request(conn: str, username: str, session: str, room: str = "main") -> rpc.JoinRequest:
    return rpc.JoinRequest(
        gateway="g1", conn=conn, username=username, room=room, session_hash=session
    )


async def on_a_clock(presence: Presence) -> tuple[PresenceService, Wall]:
    wall = Wall()
    return await presence(InMemoryRoomStore(), deadlines=wall), wall


def expired_count(op: str) -> float:
    return (
        REGISTRY.get_sample_value("roomcast_presence_ops_total", {"op": op, "outcome": "expired"})
        or 0.0
    )


def delivery(op: str, request: rpc.Wire, deadline: float) -> Message:
    """A request as the bus delivers it, with its caller's deadline and no reply address."""
    headers = {rpc.DEADLINE_HEADER: f"{deadline:.3f}"}
    return Message(topics.presence_request(op), rpc.encode(request), headers)


# --- requests whose caller gave up -------------------------------------------------------------


async def test_a_join_past_its_deadline_is_not_processed_and_is_counted(
    bus: InMemoryBus, presence: Presence
) -> None:
    service, wall = await on_a_clock(presence)
    before = expired_count("join")
    await service._handle(delivery("join", join_request("c1", "alice", "h1"), wall.now - 1))
    assert "c1" not in service.state.conns
    assert expired_count("join") == before + 1
    await service._handle(delivery("join", join_request("c2", "bob", "h2"), wall.now + 5))
    assert service.state.users("main") == ["bob"]  # a live one is processed
    assert expired_count("join") == before + 1


async def test_every_request_carries_its_callers_deadline(
    bus: InMemoryBus, presence: Presence
) -> None:
    service, wall = await on_a_clock(presence)
    wall.now += 10  # presence sees the request after its caller gave up
    before = expired_count("join")
    request = join_request("c1", "alice", "h1")
    with pytest.raises(BusTimeoutError):
        await rpc.call(bus, topics.presence_request("join"), request, timeout=0.5)
    await until(lambda: expired_count("join") == before + 1)
    assert service.state.users("main") == []


async def test_a_join_that_expires_while_waiting_for_the_lock_is_dropped(
    bus: InMemoryBus, presence: Presence
) -> None:
    service, wall = await on_a_clock(presence)
    before = expired_count("join")
    async with service._lock:  # the requests ahead of it take long
        waiting = asyncio.create_task(
            service._handle(delivery("join", join_request("c1", "alice", "h1"), wall.now + 5))
        )
        await asyncio.sleep(0)
        wall.now += 5
    await waiting
    assert service.state.users("main") == []
    assert expired_count("join") == before + 1


async def test_the_undo_of_a_dropped_join_changes_nothing_and_departures_are_never_dropped(
    bus: InMemoryBus, presence: Presence
) -> None:
    service, wall = await on_a_clock(presence)
    events = await recorder(bus)
    await join(bus, "c0", "carol", "h0", "lobby")
    await service._handle(
        delivery("join", join_request("c1", "alice", "h1", "lobby"), wall.now - 1)
    )
    # the gateway's `forget` of the join it gave up on
    leave = rpc.LeaveRequest(gateway="g1", conn="c1", room="lobby")
    await bus.publish(topics.presence_request("leave"), rpc.encode(leave))
    # a departure past its deadline still corrects the state
    gone = rpc.LeaveRequest(gateway="g1", conn="c0", room="lobby")
    await service._handle(delivery("leave", gone, wall.now - 1))
    assert service.state.users("lobby") == []
    await until(lambda: len(events) == 2)  # the announcer published carol's join and leave
    assert [(event, who) for event, _room, who in events] == [
        ("userJoin", "carol"),
        ("userLeave", "carol"),
    ]


# --- the privacy cache -------------------------------------------------------------------------


async def test_the_privacy_cache_never_admits_a_stranger_to_a_private_room(
    bus: InMemoryBus, presence: Presence
) -> None:
    store = CountingStore()
    await store.make_private("dm", (RoomMember("ann", "ha"), RoomMember("bob", "hb")))
    await presence(store)
    await join(bus, "c1", "ann", "ha", "dm")  # warms the cache
    assert await refused_code(join(bus, "c2", "cat", "hc", "dm")) == "room_private"
    assert await refused_code(join(bus, "c3", "bob", "not-bob", "dm")) == "room_private"
    assert store.private_reads == 1
    # a public room, cached as public, made private by an invitation
    await join(bus, "c4", "dan", "hd")
    await join(bus, "c1", "ann", "ha", "pair")
    invite = rpc.InviteRequest(
        gateway="g1", conn="c1", username="ann", session_hash="ha", username2="dan", room="pair"
    )
    await ask(bus, "invite", invite)
    assert await refused_code(join(bus, "c5", "eve", "he", "pair")) == "room_private"
    await join(bus, "c4", "dan", "hd", "pair")


async def test_simultaneous_joins_read_the_store_once_per_room(
    bus: InMemoryBus, presence: Presence
) -> None:
    store = CountingStore()
    service = await presence(store)
    await asyncio.gather(*(join(bus, f"c{n}", f"user{n}", f"h{n}", "lobby") for n in range(20)))
    assert len(service.state.users("lobby")) == 20
    assert store.private_reads == 1
    # fresh names: none, every reservation in force was loaded once at the takeover
    assert store.reservation_reads == 0


async def test_a_read_in_flight_when_its_key_is_written_is_not_cached() -> None:
    gate = asyncio.Event()
    reads: list[str] = []

    async def load(key: str) -> str | None:
        reads.append(key)
        await gate.wait()
        return None  # what the store said before the write

    cache: ReadAhead[str, str | None] = ReadAhead(10, load)
    assert cache.prefetch("room") is not None
    cache.put("room", "private")
    gate.set()
    await asyncio.sleep(0)
    assert await cache.get("room") == "private"
    cache.forget("room")  # a write whose outcome is unknown: ask the store again
    gate.clear()
    cache.prefetch("room")
    waiting = asyncio.create_task(cache.get("room"))  # waits for the read ahead
    await asyncio.sleep(0)
    cache.put("room", "private")  # written while the read was in flight
    gate.set()
    assert await waiting == "private"
    assert reads == ["room", "room"]


# --- moderation --------------------------------------------------------------------------------


def moderate(action: str, username: str, by: str, identity: str) -> ModerateRequest:
    return ModerateRequest(room="lobby", action=action, username=username, by=by, identity=identity)  # type: ignore[arg-type]


async def test_a_ban_refuses_once_the_cache_is_warm(bus: InMemoryBus, presence: Presence) -> None:
    await presence(InMemoryRoomStore())
    await join(bus, "c1", "ann", "ha", "lobby")  # the owner
    await join(bus, "c2", "bob", "hb", "lobby")  # the room's state is cached now
    await ask(bus, "leave", rpc.LeaveRequest(gateway="g1", conn="c2", room="lobby"))
    await ask(bus, "moderate", moderate("ban", "bob", "ann", "ha"))
    assert await refused_code(join(bus, "c2", "bob", "hb", "lobby")) == "banned"
    await ask(bus, "moderate", moderate("unban", "bob", "ann", "ha"))
    await join(bus, "c2", "bob", "hb", "lobby")


async def test_a_ban_whose_store_write_failed_is_read_back_from_the_store(
    bus: InMemoryBus, presence: Presence
) -> None:
    class LostReply(InMemoryRoomStore):
        async def add_sanction(
            self, room: str, kind: SanctionKind, sanction: Sanction, now: float
        ) -> RoomModeration:
            await super().add_sanction(room, kind, sanction, now)
            raise StoreUnavailableError("stored, but the reply was lost")

    await presence(LostReply())
    await join(bus, "c1", "ann", "ha", "lobby")
    await join(bus, "c2", "bob", "hb", "lobby")  # cached: no bans
    await ask(bus, "leave", rpc.LeaveRequest(gateway="g1", conn="c2", room="lobby"))
    assert await refused_code(ask(bus, "moderate", moderate("ban", "bob", "ann", "ha"))) == (
        "unavailable"
    )
    assert await refused_code(join(bus, "c2", "bob", "hb", "lobby")) == "banned"
