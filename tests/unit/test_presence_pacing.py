# ruff: noqa: F811 - the bus fixture is imported from the presence unit tests

"""Presence changes in a join storm (presence/announcer.py, PROTOCOL 2.1): one bus message per
room per publication, a quiet room published at once, a busy room at most `rate` times a second
once its burst is spent, every change still published and in order; a batch of joins waits for
its changes to be published or paced (`settled`), not for the pace itself."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest

from roomcast.presence import announcer as announcer_module
from roomcast.presence.announcer import Announcer
from roomcast.presence.state import Change, Changes
from roomcast.shared import topics
from roomcast.shared.bus import InMemoryBus, Message
from tests.unit.test_presence_units import bus  # noqa: F401 - the fixture

pytestmark = pytest.mark.unit


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def messages(bus: InMemoryBus) -> list[tuple[str, list[tuple[str, str]]]]:
    """(routing key, [(event, username), ...]) of every message on room keys, in order."""
    got: list[tuple[str, list[tuple[str, str]]]] = []

    async def record(message: Message) -> None:
        frames = [orjson.loads(line) for line in message.body.split(b"\n")]
        got.append((message.routing_key, [(f["event"], f["data"]["username"]) for f in frames]))

    sub = await bus.subscribe(record)
    await sub.bind("room.*.*")
    return got


def joined(room: str, user: str) -> Changes:
    return Changes(presence=[Change(room, user, True, f"c-{user}")])


async def test_a_busy_room_is_paced_and_its_changes_go_out_together_in_order(
    bus: InMemoryBus,
) -> None:
    got = await messages(bus)
    announcer = Announcer(bus, tick=10.0, rate=5.0)  # a token every 200 ms
    task = asyncio.create_task(announcer.run())
    try:
        for n in range(announcer_module.BURST):  # the burst: each batch at once
            done = announcer.announce(joined("hall", f"u{n}"), barrier=True)
            assert done is not None
            await asyncio.wait_for(done, 5)
        assert [len(frames) for _, frames in got] == [1] * announcer_module.BURST
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(3):  # paced: held for the room's next token, then in one message
            announcer.announce(joined("hall", f"late{n}"))
            settled = announcer.settled()
            assert settled is not None
            await asyncio.wait_for(settled, 5)
        assert len(got) == announcer_module.BURST  # settled: nothing waited for the pace
        last = announcer.barrier()
        assert last is not None
        await asyncio.wait_for(last, 5)
        assert loop.time() - started >= 0.1
        key, frames = got[-1]
        assert key == topics.room_event("hall", topics.PRESENCE_CHANGES)
        assert frames == [("userJoin", "late0"), ("userJoin", "late1"), ("userJoin", "late2")]
        # a quiet room is not held back by the busy one
        other = announcer.announce(joined("quiet", "q"), barrier=True)
        assert other is not None
        await asyncio.wait_for(other, 0.15)
        assert got[-1] == (topics.room_event("quiet", topics.PRESENCE_CHANGES), [("userJoin", "q")])
    finally:
        await stop(task)


async def test_a_batch_waits_for_the_paced_ones_before_it_to_be_done(bus: InMemoryBus) -> None:
    """`done` means everything announced so far is published: a quiet room's batch behind a
    paced one is published at once, but is done only once the paced one went out."""
    got = await messages(bus)
    announcer = Announcer(bus, tick=10.0, rate=5.0)
    task = asyncio.create_task(announcer.run())
    try:
        for n in range(announcer_module.BURST):
            done = announcer.announce(joined("hall", f"u{n}"), barrier=True)
            assert done is not None
            await asyncio.wait_for(done, 5)
        paced = announcer.announce(joined("hall", "late"), barrier=True)
        quiet = announcer.announce(joined("quiet", "q"), barrier=True)
        assert paced is not None and quiet is not None
        await asyncio.wait_for(announcer.settled() or asyncio.sleep(0), 5)
        assert got[-1][1] == [("userJoin", "q")]  # published at once
        assert not quiet.done()  # ...but the paced change before it is not out yet
        await asyncio.wait_for(quiet, 5)
        assert paced.done() and got[-1][1] == [("userJoin", "late")]
    finally:
        await stop(task)


async def test_rooms_whose_budget_is_whole_again_are_forgotten(bus: InMemoryBus) -> None:
    announcer = Announcer(bus, tick=10.0, rate=1000.0)
    task = asyncio.create_task(announcer.run())
    try:
        for n in range(300):
            done = announcer.announce(joined(f"room{n}", "u"), barrier=True)
            assert done is not None
            await asyncio.wait_for(done, 5)
        assert len(announcer._buckets) <= 2 * 64 + 1
    finally:
        await stop(task)
