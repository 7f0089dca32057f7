"""Presence replicas taking over (protocol 2.1, 2.2): a departure whose connection the new
replica never knew is still announced and its name still kept, and a departure is announced
and its name persisted before its request is acknowledged, so a replica killed in between
leaves the work to the next one."""

# ruff: noqa: F811 - pytest fixtures imported from the presence unit tests

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from roomcast.presence.state import Change, PresenceState, Released
from roomcast.shared import rpc, topics
from roomcast.shared.bus import InMemoryBus
from roomcast.shared.names import username_key
from roomcast.shared.rpc import Heartbeat, RosterEntry
from roomcast.shared.store.base import NameReservation
from roomcast.shared.store.memory import InMemoryRoomStore
from tests.unit.test_presence_units import (  # noqa: F401 - fixtures among them
    Clock,
    Presence,
    ask,
    bus,
    disconnect,
    join,
    presence,
    recorder,
    refused_code,
    until,
)

pytestmark = pytest.mark.unit


def test_an_unseen_departure_leaves_only_rooms_where_no_known_connection_stays() -> None:
    state = PresenceState()
    state.join("g2", "c2", "bob", "h2", "x", now=1.0)  # bob is known in x only
    changes = state.left_unseen("bob", "h2", ["main", "x", "main"], gone=True)
    assert changes.presence == [Change("main", "bob", False)]
    assert changes.released == []  # bob still holds the name through c2
    gone = state.left_unseen("carol", "h3", ["main"], gone=True)
    assert gone.presence == [Change("main", "carol", False)]
    assert gone.released == [Released(username_key("carol"), "carol", "h3")]
    left = state.left_unseen("carol", None, ["main"], gone=False)  # a leave keeps the name
    assert left.presence == [Change("main", "carol", False)] and left.released == []


async def disconnect_unseen(bus: InMemoryBus, conn: str, username: str, rooms: list[str]) -> None:
    request = rpc.DisconnectRequest(
        gateway="g1", conn=conn, username=username, session_hash="h-" + username, rooms=rooms
    )
    await ask(bus, "disconnect", request)


async def test_a_new_replica_announces_a_departure_it_never_saw_join(
    bus: InMemoryBus, presence: Presence
) -> None:
    received = await recorder(bus)
    await presence(clock=Clock(100.0))  # fresh: carol joined through the replica that died
    await disconnect_unseen(bus, "c9", "carol", ["main", "lobby"])
    await until(lambda: len(received) == 2)
    assert received == [
        ("userLeave", "main", "carol"),
        ("userLeave", "lobby", "carol"),
    ]
    leave = rpc.LeaveRequest(gateway="g1", conn="c8", room="x", username="dave")
    await ask(bus, "leave", leave)
    await until(lambda: len(received) == 3)
    assert received[2] == ("userLeave", "x", "dave")
    # and the name is kept for carol's session, as the old replica would have
    assert await refused_code(join(bus, "c10", "carol", "h-other")) == "username_taken"
    assert (await join(bus, "c11", "carol", "h-carol"))["users"] == ["carol"]


async def test_once_rebuilt_an_unknown_departure_announces_nothing(
    bus: InMemoryBus, presence: Presence
) -> None:
    """After one gateway expiry every live connection came in a heartbeat: a departure of an
    unknown connection is one that presence never admitted (a refused join)."""
    received = await recorder(bus)
    clock = Clock(100.0)
    service = await presence(clock=clock)
    expiry = service._settings.gateway_expiry
    beat = Heartbeat(gateway="g1", connections=[])
    for _ in range(4):  # deliveries closer together than an expiry: no new takeover
        # a persistent publish on the in-memory bus returns once presence has handled it
        await bus.publish(topics.presence_request("heartbeat"), rpc.encode(beat), persistent=True)
        clock.now += expiry / 2
    await disconnect_unseen(bus, "c9", "mallory", ["main"])
    await join(bus, "c1", "alice", "h1")
    await until(lambda: bool(received))
    assert received == [("userJoin", "main", "alice")]
    assert (await join(bus, "c2", "mallory", "h-other"))["users"] == ["alice", "mallory"]


async def test_a_departure_is_published_and_its_name_stored_before_it_is_acknowledged(
    bus: InMemoryBus, presence: Presence
) -> None:
    store = InMemoryRoomStore()
    service = await presence(store)
    await join(bus, "c1", "alice", "h1")
    await disconnect(bus, "c1")
    # answered only once nothing of it waits any more (no tick of the announcer, no writer)
    assert service.announcer.pending() == 0
    assert service.names.waiting == 0
    stored = await store.get_reservation(username_key("alice"), 0)
    assert isinstance(stored, NameReservation) and stored.session_hash == "h1"


async def test_a_departure_waits_for_a_slow_store_then_is_answered_anyway(
    bus: InMemoryBus, presence: Presence
) -> None:
    """The store being down delays the answer by at most the request timeout; the
    reservation is persisted when the store is back."""
    store = SlowRoomStore()
    service = await presence(store)
    service._settings = service._settings.model_copy(update={"request_timeout": 0.3})
    await join(bus, "c1", "alice", "h1")
    answered = asyncio.create_task(
        ask(bus, "disconnect", rpc.DisconnectRequest(gateway="g1", conn="c1"))
    )
    await until(lambda: store.attempts > 0)
    await asyncio.wait_for(answered, 5)
    assert service.names.waiting == 1
    store.release.set()
    await until(lambda: service.names.waiting == 0)


class SlowRoomStore(InMemoryRoomStore):
    """A room store whose reservation writes hang until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.attempts = 0

    async def reserve_name(self, reservation: Any) -> Any:
        self.attempts += 1
        await self.release.wait()
        return await super().reserve_name(reservation)


async def test_gateways_are_not_forgotten_for_presences_own_broker_outage(
    bus: InMemoryBus, presence: Presence
) -> None:
    """While the bus is away no heartbeat can come: when it is back, every gateway has a whole
    expiry to be heard again, instead of all its users leaving (and rejoining a beat later)."""
    received = await recorder(bus)
    clock = Clock(100.0)
    service = await presence(clock=clock)
    await join(bus, "c1", "alice", "h1")
    await until(lambda: bool(received))
    async with bus.outage():
        clock.now += service._settings.gateway_expiry * 3
        await asyncio.sleep(service._settings.heartbeat_interval)  # the reaper runs, deaf
    await asyncio.sleep(service._settings.heartbeat_interval)  # and runs again, hearing
    assert service.state.users("main") == ["alice"]
    clock.now += service._settings.gateway_expiry + 1  # silent for a whole expiry after it
    await until(lambda: received[-1][0] == "userLeave")
    assert received[-1] == ("userLeave", "main", "alice")
    assert service.state.users("main") == []


def test_a_connection_a_heartbeat_brings_back_gets_its_own_user_join() -> None:
    """Told it left (its gateway was forgotten), it must hear it is back: no origin skips it."""
    state = PresenceState()
    state.join("g1", "c1", "alice", "h1", "main", now=1.0)
    state.drop_gateway("g1")
    beat = Heartbeat(
        gateway="g1",
        connections=[RosterEntry(conn="c1", username="alice", session_hash="h1", rooms=["main"])],
    )
    assert state.reconcile(beat, now=2.0, grace=1.0).presence == [Change("main", "alice", True)]
