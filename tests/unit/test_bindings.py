"""`Bindings`: a broker bind or unbind in flight is never cancelled by its caller (aiormq closes
the whole channel, the gateway's subscription, when a call in flight is cancelled); the
binding still ends as its holders want."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from roomcast.gateway.bindings import Bindings
from roomcast.shared.bus import Subscription

pytestmark = pytest.mark.unit


class SlowSubscription:
    """Binds and unbinds when let through; records each call and whether one was cancelled."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.cancelled: list[str] = []
        self.started = asyncio.Event()
        self.go = asyncio.Event()

    async def _call(self, what: str) -> None:
        self.started.set()
        try:
            await self.go.wait()
        except asyncio.CancelledError:
            self.cancelled.append(what)
            raise
        self.calls.append(what)

    async def bind(self, pattern: str) -> None:
        await self._call(f"bind {pattern}")

    async def unbind(self, pattern: str) -> None:
        await self._call(f"unbind {pattern}")


def bindings() -> tuple[Bindings, SlowSubscription]:
    subscription = SlowSubscription()
    b = Bindings()
    b.attach(cast(Subscription, subscription))
    return b, subscription


async def test_a_hold_cancelled_while_its_bind_is_in_flight_lets_the_bind_finish() -> None:
    b, sub = bindings()
    holding = asyncio.create_task(b.hold("room.a.*"))
    await asyncio.wait_for(sub.started.wait(), 5)
    holding.cancel()
    await asyncio.sleep(0)  # the cancel reaches the holder while the bind is in flight
    sub.go.set()
    with pytest.raises(asyncio.CancelledError):
        await holding
    async with asyncio.timeout(5):
        while sub.calls != ["bind room.a.*", "unbind room.a.*"]:  # noqa: ASYNC110
            await asyncio.sleep(0)
    assert sub.cancelled == []
    assert b.serial("room.a.*") is None  # nobody holds it: unbound again, behind the bind


async def test_a_hold_cancelled_while_another_holds_keeps_the_binding() -> None:
    b, sub = bindings()
    first = asyncio.create_task(b.hold("room.a.*"))
    await asyncio.wait_for(sub.started.wait(), 5)
    second = asyncio.create_task(b.hold("room.a.*"))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    sub.go.set()
    await second
    results: list[Any] = await asyncio.gather(first, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert sub.cancelled == []
    assert sub.calls == ["bind room.a.*"]
    assert b.serial("room.a.*") is not None


async def test_holding_a_bound_pattern_asks_the_broker_nothing() -> None:
    b, sub = bindings()
    sub.go.set()
    await b.hold("room.a.*")
    serial = b.serial("room.a.*")
    await asyncio.gather(*(b.hold("room.a.*") for _ in range(100)))
    for _ in range(100):
        await b.release("room.a.*")
    assert b.serial("room.a.*") == serial
    assert sub.calls == ["bind room.a.*"]
    await b.release("room.a.*")
    assert sub.calls == ["bind room.a.*", "unbind room.a.*"]
    assert b.serial("room.a.*") is None
