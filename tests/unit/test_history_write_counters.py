"""The one writer's counters (`roomcast.shared.store.counters`): seqs and revs handed out from
memory between reservations in the store, and history forgetting them whenever another replica
may have written (the same moments its read index is cleared)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from roomcast.shared.bus import InMemoryBus
from roomcast.shared.store.counters import RoomRevs, SeqBlock
from roomcast.shared.store.memory import InMemoryMessageStore
from tests.support.history import running_history

pytestmark = pytest.mark.unit


def test_seqs_come_from_one_reservation_until_it_runs_out() -> None:
    block = SeqBlock(size=10)
    assert block.take(3) is None  # nothing reserved yet
    assert block.wanted(3) == 10 and block.wanted(25) == 25
    assert block.reserved(last=110, size=10, count=3) == 101
    assert [block.take(4), block.take(3)] == [104, 108]
    assert block.take(1) is None  # 111 and on are not reserved: the store is asked again


def test_a_late_reservation_never_sends_seqs_back() -> None:
    """Two reservations answered out of order: the older block serves its own caller only."""
    block = SeqBlock(size=10)
    assert block.reserved(last=20, size=10, count=2) == 11
    assert block.reserved(last=10, size=10, count=2) == 1
    assert block.take(1) == 13


def test_revs_of_a_room_are_read_once_then_handed_out_from_memory() -> None:
    revs = RoomRevs(headroom=100)
    assert revs.unknown(["a", "b"]) == ["a", "b"]
    revs.loaded("a", 40)
    revs.loaded("b", 0)
    assert revs.unknown(["a", "b", "c"]) == ["c"]
    assert [revs.take("a", 0), revs.take("a", 7), revs.take("a", 90)] == [41, 42, 90]
    # a's handed-out revs passed what its stored counter holds: raised ahead, before the write
    assert revs.to_raise(["a", "b"]) == {"a": 190}
    revs.raised({"a": 190})
    assert revs.to_raise(["a"]) == {}
    assert revs.take("a", 0) == 91
    assert revs.to_raise(["a"]) == {}  # within the reservation: no round trip
    assert revs.take("a", 500) == 500 and revs.to_raise(["a"]) == {"a": 600}


def test_a_stale_load_never_lowers_what_a_room_holds() -> None:
    revs = RoomRevs()
    revs.loaded("a", 10)
    assert revs.take("a", 0) == 11
    revs.loaded("a", 3)  # a load that started before: ignored
    assert revs.take("a", 0) == 12


def test_rooms_held_are_bounded_and_one_let_go_is_read_again() -> None:
    revs = RoomRevs(max_rooms=2)
    for room in ("a", "b", "c"):
        revs.loaded(room, 5)
    assert len(revs) == 2 and revs.unknown(["a", "b", "c"]) == ["a"]


class CountingStore(InMemoryMessageStore):
    def __init__(self) -> None:
        super().__init__()
        self.forgotten = 0

    def forget_counters(self) -> None:
        self.forgotten += 1


@pytest.fixture
async def history() -> AsyncIterator[tuple[InMemoryBus, CountingStore]]:
    store = CountingStore()
    async with running_history("history-write-counters", store) as (bus, _):
        yield bus, store


async def test_history_forgets_the_counters_when_another_replica_may_have_written(
    history: tuple[InMemoryBus, CountingStore],
) -> None:
    """A lost connection (another replica may take over and write), and the reconnect (it may
    have written meanwhile): the counters are read again before the next write."""
    bus, store = history
    assert store.forgotten == 0
    async with bus.outage():
        assert store.forgotten == 1
    for _ in range(500):  # the gap is reported in a task of its own
        if store.forgotten == 2:
            break
        await asyncio.sleep(0.01)
    assert store.forgotten == 2
