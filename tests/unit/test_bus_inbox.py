"""The subscription inbox (roomcast.shared.bus.inbox) on its own: what the contract tests cannot
provoke through a bus. Bounded waits only; no test asserts how long anything took."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest
import structlog
from prometheus_client import REGISTRY

from roomcast.shared.bus import Message
from roomcast.shared.bus.inbox import Inbox

pytestmark = pytest.mark.unit
T = TypeVar("T")


async def bounded(awaitable: Awaitable[T], within: float = 10.0) -> T:
    async with asyncio.timeout(within):
        return await awaitable


def deaths() -> float:
    return (
        REGISTRY.get_sample_value("roomcast_bus_task_deaths_total", {"task": "subscription"}) or 0
    )


def message(n: int) -> Message:
    return Message("room.a.msg", b"%d" % n)


async def test_a_loop_cancelled_from_outside_is_restarted_and_keeps_the_order() -> None:
    got: list[bytes] = []
    arrived = asyncio.Event()

    async def handler(m: Message) -> None:
        got.append(m.body)
        arrived.set()

    inbox = Inbox(handler, name="cancel-me", label="cancel-me")
    inbox.start()
    before = deaths()
    (loop_task,) = [t for t in asyncio.all_tasks() if t.get_name() == "bus-sub-cancel-me"]
    loop_task.cancel()
    await asyncio.sleep(0)  # let the cancellation land and the supervisor restart the loop
    for n in range(3):
        inbox.put(message(n))
    while len(got) < 3:
        arrived.clear()
        await bounded(arrived.wait())
    assert got == [b"0", b"1", b"2"]
    assert deaths() == before + 1
    await inbox.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "bus-sub-cancel-me"]


async def test_gaps_reported_while_on_gap_runs_make_exactly_one_more_call() -> None:
    running, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def on_gap() -> None:
        nonlocal calls
        calls += 1
        running.set()
        await release.wait()

    async def handler(m: Message) -> None:
        pass

    inbox = Inbox(handler, name="coalesce", on_gap=on_gap)
    inbox.start()
    inbox.gap("reconnect")
    await bounded(running.wait())
    running.clear()
    for _ in range(5):  # five more gaps while the first call runs
        inbox.gap("reconnect")
    assert calls == 1  # calls never overlap
    release.set()
    await bounded(running.wait())  # the one call that follows
    await asyncio.sleep(0.05)
    assert calls == 2
    await inbox.close()


async def test_overflow_warns_once_per_episode_not_per_drop() -> None:
    hold = asyncio.Event()

    async def handler(m: Message) -> None:
        await hold.wait()

    gaps = asyncio.Event()

    async def on_gap() -> None:
        gaps.set()

    inbox = Inbox(handler, name="flood", label="flood", limit=4, on_gap=on_gap)
    inbox.start()
    inbox.put(message(0))
    await asyncio.sleep(0)  # the handler takes it and holds
    with structlog.testing.capture_logs() as logs:
        for n in range(1, 50):
            inbox.put(message(n))
        hold.set()
        await bounded(gaps.wait())
    full = [e for e in logs if e["event"] == "subscription inbox full; dropping deliveries"]
    room = [e for e in logs if e["event"] == "subscription inbox has room again"]
    assert len(full) == 1
    assert len(room) == 1 and room[0]["dropped"] == 45
    await inbox.close()


async def test_close_from_inside_the_handler_ends_the_loop() -> None:
    closed = asyncio.Event()
    inbox: Inbox

    async def handler(m: Message) -> None:
        await inbox.close()
        closed.set()

    inbox = Inbox(handler, name="self-close")
    inbox.start()
    before = deaths()
    inbox.put(message(1))
    inbox.put(message(2))
    await bounded(closed.wait())
    await asyncio.sleep(0.01)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "bus-sub-self-close"]
    assert deaths() == before  # ended by close(): not a death
    inbox.put(message(3))  # a closed inbox takes nothing, and does not raise
    assert inbox.depth <= 1


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Inbox(lambda m: asyncio.sleep(0), name="x", limit=0)
