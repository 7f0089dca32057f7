"""RabbitBus subscriptions consume through aiormq (`subscriptions.py`): no aio-pika
`IncomingMessage` per delivery, order and headers kept, and after a channel reopen the queue is
consumed again, retried while the channel stays open, before the gap is reported. The broker
restart itself is tests/contract's (on_gap after a reconnect, on_loss before on_gap)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aio_pika.queue
import pytest

from roomcast.shared.bus import Message
from roomcast.shared.bus.rabbit import RabbitBus, subscriptions
from roomcast.shared.bus.rabbit.subscriptions import RabbitSubscription
from tests.servers.rabbitmq import private_exchange_bus

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus() -> AsyncIterator[RabbitBus]:
    async with private_exchange_bus() as bus:
        yield bus


class Got:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.changed = asyncio.Event()
        self.gaps = 0

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)
        self.changed.set()

    async def on_gap(self) -> None:
        self.gaps += 1
        self.changed.set()

    async def until(self, predicate: Any) -> None:
        async with asyncio.timeout(10):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


class NoIncomingMessage:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a subscription delivery built aio-pika's IncomingMessage")


async def test_deliveries_come_in_order_with_headers_and_no_incoming_message(
    bus: RabbitBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aio_pika.queue, "IncomingMessage", NoIncomingMessage)
    got = Got()
    sub = await bus.subscribe(got, name="fast")
    await sub.bind("room.f.*")
    for i in range(50):
        await bus.publish("room.f.msg", str(i).encode(), headers={"n": str(i)})
    await got.until(lambda: len(got.messages) == 50)
    assert [m.body for m in got.messages] == [str(i).encode() for i in range(50)]
    assert [m.headers for m in got.messages] == [{"n": str(i)} for i in range(50)]
    assert {m.routing_key for m in got.messages} == {"room.f.msg"}
    await sub.close()


async def test_a_reopen_consumes_again_retrying_before_it_reports_the_gap(
    bus: RabbitBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reopen callback is called as aio-pika would after a restore; the first try to
    consume fails on a channel that stays open."""
    got = Got()
    monkeypatch.setattr(subscriptions, "_RETRY_DELAY", 0.0)
    sub = await bus.subscribe(got, name="again", on_gap=got.on_gap)
    assert isinstance(sub, RabbitSubscription)
    await sub.bind("room.g.*")
    consume = sub._consume
    tries = 0

    async def failing_once() -> None:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise ConnectionError("refused once (test)")
        await consume()

    monkeypatch.setattr(sub, "_consume", failing_once)
    sub._on_reopen(None)
    await got.until(lambda: got.gaps == 1)
    assert tries == 2  # the gap came once the second try consumed
    await bus.publish("room.g.msg", b"after")
    await got.until(lambda: any(m.body == b"after" for m in got.messages))
    await sub.close()


async def test_a_stopped_subscription_neither_consumes_again_nor_reports_a_gap(
    bus: RabbitBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = Got()
    sub = await bus.subscribe(got, name="stopped", on_gap=got.on_gap)
    assert isinstance(sub, RabbitSubscription)
    tries = 0

    async def counting() -> None:
        nonlocal tries
        tries += 1

    monkeypatch.setattr(sub, "_consume", counting)
    await sub.stop()
    sub._on_reopen(None)
    await asyncio.sleep(0)
    assert (tries, got.gaps) == (0, 0)
    await sub.close()
