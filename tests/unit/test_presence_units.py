"""Presence without a gateway: its state (protocol 2.1 changes, reconciliation from
heartbeats, names by key), the announcer (userJoin/userLeave only, coalesced per tick, joins as
barriers), name reservations (2.2), bounded caches and supervised background tasks."""

from __future__ import annotations

import ast
import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from roomcast.presence import announcer as announcer_module
from roomcast.presence import service as service_module
from roomcast.presence.announcer import Announcer
from roomcast.presence.cache import LRU
from roomcast.presence.reservations import NameReservations
from roomcast.presence.service import PresenceService
from roomcast.presence.state import Change, Changes, PresenceState, Released
from roomcast.shared import rpc, topics
from roomcast.shared.bus import InMemoryBus, Message
from roomcast.shared.config import Settings
from roomcast.shared.errors import ProtocolError
from roomcast.shared.names import username_key
from roomcast.shared.rpc import Heartbeat, RosterEntry
from roomcast.shared.store.base import NameReservation, StoreUnavailableError
from roomcast.shared.store.memory import InMemoryRoomStore
from tests.support.clock import Clock

pytestmark = pytest.mark.unit

PRESENCE_DIR = Path(inspect.getfile(PresenceService)).parent


# --- state -----------------------------------------------------------------------------------


def test_heartbeat_rebuilds_an_empty_state_and_reports_who_appeared() -> None:
    state = PresenceState()
    beat = Heartbeat(
        gateway="g1",
        connections=[
            RosterEntry(conn="c1", username="alice", session_hash="h1", rooms=["main", "x"]),
            RosterEntry(conn="c2", username="bob", session_hash="h2", rooms=["main"]),
            RosterEntry(conn="c3", username="bob", session_hash="h2", rooms=["main"]),
        ],
    )
    changes = state.reconcile(beat, now=100.0, grace=2.0)
    assert changes.joined == [("main", "alice"), ("x", "alice"), ("main", "bob")]  # bob once
    assert not changes.left and not changes.released
    assert state.users("main") == ["alice", "bob"]
    assert state.session_hashes("alice") == {"h1"}


def test_heartbeat_keeps_young_memberships_and_drops_old_missing_ones() -> None:
    state = PresenceState()
    state.join("g1", "c1", "alice", "h1", "main", now=100.0)
    state.join("g1", "c2", "bob", "h2", "main", now=109.5)
    changes = state.reconcile(Heartbeat(gateway="g1", connections=[]), now=110.0, grace=2.0)
    assert changes.presence == [Change("main", "alice", False)]
    assert changes.released == [Released(username_key("alice"), "alice", "h1")]
    assert state.users("main") == ["bob"]  # joined 0.5 s ago: the beat may predate it


def test_silent_gateway_expires_and_its_users_leave_and_keep_their_names() -> None:
    state = PresenceState()
    state.touch("g1", 100.0)
    state.touch("g2", 104.0)
    state.join("g1", "c1", "alice", "h1", "main", now=100.0)
    state.join("g2", "c2", "bob", "h2", "main", now=104.0)
    assert state.expired(now=107.0, expiry=6.0) == ["g1"]
    changes = state.drop_gateway("g1")
    assert changes.left == [("main", "alice")] and state.users("main") == ["bob"]
    assert [r.username for r in changes.released] == ["alice"]


def test_a_user_joins_with_the_first_connection_and_leaves_with_the_last() -> None:
    state = PresenceState()
    first = state.join("g1", "c1", "alice", "h1", "main", now=1.0)
    assert first.presence == [Change("main", "alice", True, "c1")]
    assert state.join("g2", "c2", "alice", "h1", "main", now=1.0).presence == []
    assert state.join("g2", "c2", "alice", "h1", "main", now=1.0).presence == []  # repeated
    assert state.disconnect("c1") == Changes()
    last = state.disconnect("c2")
    assert last.left == [("main", "alice")]
    assert last.released == [Released(username_key("alice"), "alice", "h1")]


def test_leaving_a_room_keeps_the_name_held() -> None:
    state = PresenceState()
    state.join("g1", "c1", "alice", "h1", "main", now=1.0)
    changes = state.leave("c1", "main")
    assert changes.left == [("main", "alice")] and not changes.released
    assert [c.conn for c in state.holders(username_key("alice"))] == ["c1"]


def test_holders_are_found_by_key() -> None:
    state = PresenceState()
    state.join("g1", "c1", "Alice", "h1", "main", now=1.0)
    assert [c.username for c in state.holders(username_key("\u0430lice"))] == ["Alice"]
    assert state.session_hashes("ALICE") == {"h1"}
    assert state.session_hashes("alice", except_conn="c1") == set()


# --- the announcer ---------------------------------------------------------------------------


async def recorder(bus: InMemoryBus, pattern: str = "room.*.*") -> list[tuple[str, str, str]]:
    """(event, room, username) of every presence change published on room keys, in order (a
    message carries a room's changes of one publication, one frame per line)."""
    received: list[tuple[str, str, str]] = []

    async def record(message: Message) -> None:
        for line in message.body.split(b"\n"):
            frame = orjson.loads(line)
            received.append((frame["event"], frame["room"], frame["data"]["username"]))

    sub = await bus.subscribe(record)
    await sub.bind(pattern)
    return received


@pytest.fixture
async def bus() -> AsyncIterator[InMemoryBus]:
    memory = InMemoryBus()
    await memory.connect()
    yield memory
    await memory.close()


async def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 - plain state, no event to wait on
            await asyncio.sleep(0.005)


async def run_announcer(announcer: Announcer) -> asyncio.Task[None]:
    return asyncio.create_task(announcer.run())


def change(room: str, user: str, present: bool, conn: str = "") -> Changes:
    return Changes(presence=[Change(room, user, present, conn)])


async def test_announcer_sends_only_joins_and_leaves_in_order(bus: InMemoryBus) -> None:
    received = await recorder(bus)
    announcer = Announcer(bus, tick=0.001)
    task = await run_announcer(announcer)
    for i in range(3):
        announcer.announce(change("main", f"u{i}", True, f"c{i}"))
        await asyncio.sleep(0.01)
    announcer.announce(change("main", "u1", False))
    done = announcer.announce(Changes(), barrier=True)
    if done is not None:
        await asyncio.wait_for(done, 5)
    await until(lambda: len(received) == 4)
    assert received == [
        ("userJoin", "main", "u0"),
        ("userJoin", "main", "u1"),
        ("userJoin", "main", "u2"),
        ("userLeave", "main", "u1"),
    ]
    assert all(event != "activeUsers" for event, _, _ in received)
    task.cancel()


async def test_a_flip_back_within_a_tick_sends_nothing(bus: InMemoryBus) -> None:
    received = await recorder(bus)
    announcer = Announcer(bus, tick=0.05)
    task = await run_announcer(announcer)
    announcer.announce(change("main", "alice", False))  # leaves...
    announcer.announce(change("main", "alice", True, "c9"))  # ...and is back within the tick
    announcer.announce(change("main", "bob", True, "c2"))  # joins...
    announcer.announce(change("main", "bob", False))  # ...and is gone again
    announcer.announce(change("x", "cat", True, "c3"))
    await until(lambda: announcer.pending() == 0)
    await until(lambda: len(received) >= 1)
    await asyncio.sleep(0.02)
    assert received == [("userJoin", "x", "cat")]
    task.cancel()


async def test_a_join_is_a_barrier_so_its_snapshot_misses_nothing(bus: InMemoryBus) -> None:
    """bob leaves, alice joins (her snapshot lacks bob), bob is back: the leave must be sent
    before alice's reply and the rejoin after it, not coalesced away."""
    received = await recorder(bus)
    announcer = Announcer(bus, tick=10.0)  # only barriers close batches here
    task = await run_announcer(announcer)
    announcer.announce(change("main", "bob", False))
    done = announcer.announce(change("main", "alice", True, "ca"), barrier=True)
    announcer.announce(change("main", "bob", True, "cb"))
    assert done is not None
    await asyncio.wait_for(done, 5)
    assert received == [("userLeave", "main", "bob"), ("userJoin", "main", "alice")]
    last = announcer.announce(Changes(), barrier=True)
    assert last is not None
    await asyncio.wait_for(last, 5)
    assert received[-1] == ("userJoin", "main", "bob")
    task.cancel()


async def test_an_event_that_cannot_be_published_is_logged_and_the_rest_go_on(
    bus: InMemoryBus,
) -> None:
    received = await recorder(bus)
    real_publish = bus.publish

    async def publish(key: str, body: bytes, **kwargs: Any) -> None:
        if ".broken." in key:
            raise ValueError("routing key too long")
        await real_publish(key, body, **kwargs)

    bus.publish = publish  # type: ignore[method-assign]
    announcer = Announcer(bus, tick=0.001)
    task = await run_announcer(announcer)
    with capture_logs() as logs:
        announcer.announce(change("broken", "alice", True, "c1"))
        done = announcer.announce(change("main", "alice", True, "c1"), barrier=True)
        assert done is not None
        await asyncio.wait_for(done, 5)
    assert received == [("userJoin", "main", "alice")]
    [line] = [entry for entry in logs if entry["event"] == "presence events not published"]
    assert line["events"] == 1 and line["room"] == "broken"
    assert "routing key too long" in line["error"]
    assert not task.done()
    task.cancel()


# --- the service, through the bus ------------------------------------------------------------


Presence = Callable[..., Awaitable[PresenceService]]


@pytest.fixture
async def presence(bus: InMemoryBus) -> AsyncIterator[Presence]:
    started: list[PresenceService] = []

    async def start(store: InMemoryRoomStore | None = None, **kwargs: Any) -> PresenceService:
        settings = Settings(exchange=f"presence-test-{len(started)}", heartbeat_interval=0.2)
        service = PresenceService(bus, store or InMemoryRoomStore(), settings, **kwargs)
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop()


async def ask(bus: InMemoryBus, op: str, request: rpc.Wire) -> Any:
    return await rpc.call(bus, topics.presence_request(op), request, timeout=5)


async def join(
    bus: InMemoryBus, conn: str, username: str, session: str, room: str = "main", gw: str = "g1"
) -> Any:
    request = rpc.JoinRequest(
        gateway=gw, conn=conn, username=username, room=room, session_hash=session
    )
    return await ask(bus, "join", request)


async def disconnect(bus: InMemoryBus, conn: str, gw: str = "g1") -> None:
    await ask(bus, "disconnect", rpc.DisconnectRequest(gateway=gw, conn=conn))


async def refused_code(awaitable: Awaitable[Any]) -> str:
    with pytest.raises(ProtocolError) as caught:
        await awaitable
    return caught.value.code


async def test_a_lookalike_of_a_live_name_is_taken(bus: InMemoryBus, presence: Presence) -> None:
    await presence()
    assert (await join(bus, "c1", "alice", "h1"))["users"] == ["alice"]
    for lookalike in ("\u0430lice", "ALICE", "Alice"):
        assert await refused_code(join(bus, "c2", lookalike, "h2")) == "username_taken"
    assert (await join(bus, "c3", "alice", "h1"))["users"] == ["alice"]  # the same session


async def test_a_name_is_kept_for_its_session_after_the_last_connection(
    bus: InMemoryBus, presence: Presence
) -> None:
    wall = Clock(1_800_000_000.0)
    service = await presence(wall=wall)
    await join(bus, "c1", "alice", "h1")
    await disconnect(bus, "c1")
    with pytest.raises(ProtocolError) as caught:
        await join(bus, "c2", "\u0430lice", "h2")
    assert caught.value.code == "username_taken"
    assert "kept for the user who had it" in caught.value.message
    assert (await join(bus, "c3", "alice", "h1"))["users"] == ["alice"]  # the owner is back
    await disconnect(bus, "c3")
    wall.now += service._settings.name_grace_seconds + 1  # the grace period is over
    assert (await join(bus, "c4", "alice", "h2"))["users"] == ["alice"]


async def test_a_dead_gateways_names_are_kept_too(bus: InMemoryBus, presence: Presence) -> None:
    await presence()
    await join(bus, "c1", "alice", "h1", gw="g1")
    await bus.publish(topics.presence_request("gone"), rpc.encode(rpc.GatewayGone(gateway="g1")))
    await asyncio.sleep(0.05)
    assert await refused_code(join(bus, "c2", "alice", "h2", gw="g2")) == "username_taken"


async def test_reservations_survive_a_presence_restart(
    bus: InMemoryBus, presence: Presence
) -> None:
    store = InMemoryRoomStore()
    first = await presence(store)
    await join(bus, "c1", "alice", "h1")
    await disconnect(bus, "c1")
    await until(lambda: first.names.waiting == 0)  # persisted
    await first.stop()
    await presence(store)  # a new replica: an empty state and empty caches
    assert await refused_code(join(bus, "c2", "alice", "h2")) == "username_taken"
    assert (await join(bus, "c3", "alice", "h1"))["users"] == ["alice"]


async def test_the_join_reply_matches_what_was_announced(
    bus: InMemoryBus, presence: Presence
) -> None:
    received = await recorder(bus)
    await presence()
    await join(bus, "cb", "bob", "hb")
    await disconnect(bus, "cb")
    reply = await join(bus, "ca", "alice", "ha")
    seen_before_reply = list(received)
    await join(bus, "cb2", "bob", "hb")
    await until(lambda: len(received) == 4)
    assert reply["users"] == ["alice"]
    assert seen_before_reply == [
        ("userJoin", "main", "bob"),
        ("userLeave", "main", "bob"),
        ("userJoin", "main", "alice"),
    ]
    # the joiner's list: the snapshot, then every later change, equals the roster
    users = set(reply["users"])
    for event, _, who in received[len(seen_before_reply) :]:
        users = users | {who} if event == "userJoin" else users - {who}
    roster = rpc.UsersReply.model_validate(await ask(bus, "users", rpc.UsersRequest(room="main")))
    assert sorted(users) == roster.users == ["alice", "bob"]


async def test_heartbeat_reconciliation_announces_what_it_changes(
    bus: InMemoryBus, presence: Presence
) -> None:
    received = await recorder(bus)
    await presence()
    beat = rpc.Heartbeat(
        gateway="g9",
        connections=[RosterEntry(conn="c1", username="dan", session_hash="hd", rooms=["main"])],
    )
    await bus.publish(topics.presence_request("heartbeat"), rpc.encode(beat))
    # no origin: dan's own socket gets it too (it had no snapshot from this presence)
    await until(lambda: ("userJoin", "main", "dan") in received)
    assert await refused_code(join(bus, "c2", "DAN", "hx")) == "username_taken"


async def test_private_room_cache_is_bounded(
    bus: InMemoryBus, presence: Presence, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "PRIVATE_CACHE_CAP", 3)
    store = InMemoryRoomStore()
    for n in range(10):
        await store.make_private(f"dm{n}", (_member("ann", "ha"), _member("bob", "hb")))
    service = await presence(store)
    for n in range(10):
        await refused_code(join(bus, f"c{n}", "cat", "hc", room=f"dm{n}"))
    assert len(service._private) == 3


def _member(username: str, session_hash: str) -> Any:
    from roomcast.shared.store.base import RoomMember

    return RoomMember(username, session_hash)


# --- reservations, caches ----------------------------------------------------------------------


async def test_reservation_cache_is_an_lru_with_a_cap_that_falls_back_to_the_store() -> None:
    store = InMemoryRoomStore()
    wall = Clock(1_800_000_000.0)
    names = NameReservations(store, 600, wall, cache_cap=2)
    writer = asyncio.create_task(names.run())
    for user in ("ann", "bob", "cat"):
        names.reserve(username_key(user), user, f"h-{user}")
    await until(lambda: names.waiting == 0)
    assert len(names._cache) == 2
    assert await names.holder(username_key("ann")) == NameReservation(
        username_key("ann"), "ann", "h-ann", wall.now + 600
    )  # evicted from the cache, read from the store
    wall.now += 601
    assert await names.holder(username_key("ann")) is None
    assert await names.purge() == 3
    writer.cancel()


async def test_unreadable_reservations_let_the_join_through_and_say_so() -> None:
    class DownStore(InMemoryRoomStore):
        async def get_reservation(self, key: str, now: float) -> NameReservation | None:
            raise StoreUnavailableError("mongo get_reservation failed: ServerSelectionTimeoutError")

    names = NameReservations(DownStore(), 600, Clock(1_800_000_000.0))
    with capture_logs() as logs:
        assert await names.holder("alice") is None
    assert any(e["event"] == "name reservations unreadable; join let through" for e in logs)


def test_lru_evicts_the_least_recently_used() -> None:
    cache: LRU[str, int] = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and "a" in cache and "c" in cache and len(cache) == 2
    assert cache.lookup("zzz") == (False, None)


# --- supervision -------------------------------------------------------------------------------


def restarts(task: str) -> float:
    value = REGISTRY.get_sample_value("roomcast_background_task_restarts_total", {"task": task})
    return value or 0.0


async def test_a_dying_announcer_is_restarted_logged_and_counted(
    bus: InMemoryBus, presence: Presence, monkeypatch: pytest.MonkeyPatch
) -> None:
    received = await recorder(bus)
    before = restarts("presence-announcer")
    service = await presence(restart_delay=0.01)
    real = service.announcer._publish_due
    failures = [RuntimeError("boom")]

    async def flaky(now: float) -> None:
        if failures:
            raise failures.pop()
        await real(now)

    monkeypatch.setattr(service.announcer, "_publish_due", flaky)
    with capture_logs() as logs:
        await join(bus, "c1", "alice", "h1")  # its batch dies with the task
        await join(bus, "c2", "bob", "h2")
    assert ("userJoin", "main", "bob") in received
    assert restarts("presence-announcer") == before + 1
    [died] = [e for e in logs if e["event"] == "background task died"]
    assert died["task"] == "presence-announcer" and "boom" in died["reason"]
    assert service.ready()


async def test_presence_is_unready_when_a_task_cannot_be_kept_alive(
    bus: InMemoryBus, presence: Presence, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def always_dies() -> None:
        raise RuntimeError("store client broken")

    service = await presence(restart_delay=0.001, give_up_after=3)
    assert service.ready()
    with capture_logs():
        await service._tasks[2].stop()
        monkeypatch.setattr(service._tasks[2], "_run", always_dies)
        service._tasks[2].start()
        await until(lambda: not service.ready())
    assert not await service.ready_check()


# --- the log calls -----------------------------------------------------------------------------


def test_no_presence_log_call_passes_event_as_a_keyword() -> None:
    """structlog's first argument is `event`: `log.warning(..., event=...)` raises TypeError
    inside the very handler that should report a failure (issue 10)."""
    offenders = []
    for path in sorted(PRESENCE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and any(k.arg == "event" for k in node.keywords)
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
    assert announcer_module.__file__ is not None  # the announcer is among the files checked
    assert Path(announcer_module.__file__).parent == PRESENCE_DIR
