"""Presence's state and announcer, without a gateway: reconciliation from heartbeats and the
coalescing of `activeUsers` in a join storm."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from roomcast.presence.announcer import Announcer
from roomcast.presence.state import PresenceState
from roomcast.shared.bus import InMemoryBus, Message
from roomcast.shared.rpc import Heartbeat, RosterEntry

pytestmark = pytest.mark.unit


def test_heartbeat_rebuilds_an_empty_state_and_reports_changed_rooms():
    state = PresenceState()
    beat = Heartbeat(
        gateway="g1",
        connections=[
            RosterEntry(conn="c1", username="alice", session_hash="h1", rooms=["main", "x"]),
            RosterEntry(conn="c2", username="bob", session_hash="h2", rooms=["main"]),
        ],
    )
    changes = state.reconcile(beat, now=100.0, grace=2.0)
    assert changes.rooms == {"main", "x"} and not changes.left and not changes.joined
    assert state.users("main") == ["alice", "bob"]
    assert state.session_hashes("alice") == {"h1"}


def test_heartbeat_keeps_young_memberships_and_drops_old_missing_ones():
    state = PresenceState()
    state.join("g1", "c1", "alice", "h1", "main", now=100.0)
    state.join("g1", "c2", "bob", "h2", "main", now=109.5)
    empty = Heartbeat(gateway="g1", connections=[])
    changes = state.reconcile(empty, now=110.0, grace=2.0)
    assert changes.left == [("main", "alice")]
    assert state.users("main") == ["bob"]  # joined 0.5 s ago: the beat may predate it


def test_silent_gateway_expires_and_its_users_leave():
    state = PresenceState()
    state.touch("g1", 100.0)
    state.touch("g2", 104.0)
    state.join("g1", "c1", "alice", "h1", "main", now=100.0)
    state.join("g2", "c2", "bob", "h2", "main", now=104.0)
    assert state.expired(now=107.0, expiry=6.0) == ["g1"]
    changes = state.drop_gateway("g1")
    assert changes.left == [("main", "alice")] and state.users("main") == ["bob"]


def test_user_leaves_only_with_the_last_connection():
    state = PresenceState()
    state.join("g1", "c1", "alice", "h1", "main", now=1.0)
    state.join("g2", "c2", "alice", "h1", "main", now=1.0)
    assert state.disconnect("c1").left == []
    assert state.disconnect("c2").left == [("main", "alice")]


async def test_announcer_coalesces_active_users_and_keeps_order():
    bus = InMemoryBus()
    await bus.connect()
    received: list[tuple[str, object]] = []

    async def record(message: Message) -> None:
        frame = orjson.loads(message.body)
        received.append((frame["event"], frame["data"]))

    sub = await bus.subscribe(record)
    await sub.bind("room.main.*")
    state = PresenceState()
    announcer = Announcer(bus, state.users)
    futures = [
        announcer.announce(state.join("g", f"c{i}", f"u{i}", f"h{i}", "main", now=1.0))
        for i in range(3)
    ]
    announcer.start()
    await asyncio.wait_for(asyncio.gather(*[f for f in futures if f is not None]), 5)
    await asyncio.sleep(0.05)
    lists = [data for event, data in received if event == "activeUsers"]
    assert lists == [["u0", "u1", "u2"]]
    assert [d["username"] for e, d in received if e == "userJoin"] == ["u0", "u1", "u2"]  # type: ignore[index]
    await announcer.stop()
    await bus.close()
