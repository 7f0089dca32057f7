"""RabbitBus work consumers consume through aiormq (`consumers.py`) and settle in groups
(`acks.py`), against the machine's broker: no aio-pika `IncomingMessage` per delivery; a turn's
finished deliveries are one multiple ack; rejects and requeues in the middle stay exact (the
broker would close the channel on a wrong tag, and a wrong ack would lose or repeat a message);
a channel the broker closed is reopened and consumed again; a consumer the broker cancelled
(queue deleted) declares its queue and consumes again. The broker restart is tests/contract's
and tests/integration/test_faults.py's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import aio_pika.queue
import pytest

from roomcast.shared.bus import Message, RejectMessage
from roomcast.shared.bus.rabbit import RabbitBus, consumers
from roomcast.shared.bus.rabbit.consumers import RabbitConsumer
from tests.servers.rabbitmq import machine_broker_url, private_exchange_bus

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus() -> AsyncIterator[RabbitBus]:
    async with private_exchange_bus() as bus:
        yield bus


@pytest.fixture
async def queue_name(bus: RabbitBus) -> AsyncIterator[str]:
    name = f"{bus.exchange_name}.work.{uuid.uuid4().hex[:8]}"
    yield name
    connection = await aio_pika.connect(machine_broker_url())
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)


class Seen:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.changed = asyncio.Event()

    def add(self, body: bytes) -> None:
        self.bodies.append(body)
        self.changed.set()

    async def until(self, predicate: Callable[[], bool], within: float = 10) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


class NoIncomingMessage:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a work delivery built aio-pika's IncomingMessage")


async def nothing_left(bus: RabbitBus, queue: str, *, wait: float = 0.5) -> list[bytes]:
    """What a fresh consumer of `queue` receives within `wait`: whatever was left unsettled."""
    left = Seen()

    async def take(message: Message) -> None:
        left.add(message.body)

    consumer = await bus.consume(queue, ["job.*"], take, prefetch=100)
    await asyncio.sleep(wait)
    await consumer.close()
    return left.bodies


async def test_a_batch_finished_in_one_turn_is_one_ack_and_no_incoming_message(
    bus: RabbitBus, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aio_pika.queue, "IncomingMessage", NoIncomingMessage)
    seen = Seen()
    release = asyncio.Event()

    async def handler(message: Message) -> None:
        seen.add(message.body)
        assert message.headers == {"n": message.body.decode()}
        assert message.routing_key == "job.run"
        await release.wait()

    consumer = await bus.consume(queue_name, ["job.*"], handler, prefetch=64)
    assert isinstance(consumer, RabbitConsumer)
    for i in range(25):
        await bus.publish("job.run", b"%d" % i, headers={"n": str(i)})
    await seen.until(lambda: len(seen.bodies) == 25)
    assert seen.bodies == [b"%d" % i for i in range(25)]
    acks = consumer._acks
    assert acks is not None
    release.set()
    await asyncio.sleep(0.2)
    assert acks.frames_sent == 1  # one multiple ack for the 25
    assert acks.pending == 0
    await consumer.close()
    assert await nothing_left(bus, queue_name) == []


async def test_rejects_and_requeues_in_the_middle_of_a_group_are_exact(
    bus: RabbitBus, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumers, "_REQUEUE_DELAY", 0.0)
    seen = Seen()
    release = asyncio.Event()
    failed: set[bytes] = set()

    async def handler(message: Message) -> None:
        seen.add(message.body)
        n = int(message.body)
        if n < 30:
            await release.wait()
        if n % 7 == 3:
            raise RejectMessage("never processable (test)")
        if n % 5 == 1 and message.body not in failed:
            failed.add(message.body)
            raise RuntimeError("transient (expected by the test)")
        if n == 12:
            await asyncio.sleep(0.1)  # finishes after those behind it

    consumer = await bus.consume(queue_name, ["job.*"], handler, prefetch=64)
    for i in range(30):
        await bus.publish("job.run", b"%d" % i)
    await seen.until(lambda: len(seen.bodies) == 30)
    release.set()
    requeued = sorted(b"%d" % i for i in range(30) if i % 5 == 1 and i % 7 != 3)
    await seen.until(lambda: len(seen.bodies) == 30 + len(requeued))
    await bus.publish("job.run", b"30")  # the channel still works: no wrong tag closed it
    await seen.until(lambda: b"30" in seen.bodies)
    await asyncio.sleep(0.2)
    assert sorted(seen.bodies[30:-1]) == requeued  # each requeued once, nothing else again
    await consumer.close()
    assert await nothing_left(bus, queue_name) == []


async def test_a_channel_the_broker_closed_is_consumed_again_and_its_unsettled_come_back(
    bus: RabbitBus, queue_name: str
) -> None:
    seen = Seen()
    hold = asyncio.Event()

    async def handler(message: Message) -> None:
        seen.add(message.body)
        if message.body == b"held":
            await hold.wait()

    consumer = await bus.consume(queue_name, ["job.*"], handler, prefetch=8)
    assert isinstance(consumer, RabbitConsumer)
    await bus.publish("job.run", b"held")
    await seen.until(lambda: seen.bodies == [b"held"])
    old = consumer._acks
    assert old is not None
    # an ack of a tag the channel never delivered: the broker closes the channel (406)
    await old.channel.basic_ack(10_000, wait=False)
    await seen.until(lambda: seen.bodies.count(b"held") == 2)  # requeued, consumed again
    assert consumer._acks is not old
    hold.set()
    await bus.publish("job.run", b"after")
    await seen.until(lambda: b"after" in seen.bodies)
    await consumer.close()
    assert await nothing_left(bus, queue_name) == []


async def test_a_consumer_the_broker_cancelled_declares_its_queue_and_consumes_again(
    bus: RabbitBus, queue_name: str
) -> None:
    seen = Seen()

    async def handler(message: Message) -> None:
        seen.add(message.body)

    consumer = await bus.consume(queue_name, ["job.*"], handler)
    connection = await aio_pika.connect(machine_broker_url())
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue_name)  # the broker cancels our consumer
    attempt = 0

    async def delivered_again() -> bool:
        nonlocal attempt
        attempt += 1
        body = b"again-%d" % attempt
        await bus.publish("job.run", body)
        try:
            await seen.until(lambda: body in seen.bodies, within=0.5)
        except TimeoutError:
            return False
        return True

    async with asyncio.timeout(10):
        while not await delivered_again():
            pass
    await consumer.close()


async def test_close_sends_the_settlements_of_handlers_that_finish_in_its_grace(
    bus: RabbitBus, queue_name: str
) -> None:
    seen = Seen()

    async def handler(message: Message) -> None:
        seen.add(message.body)
        await asyncio.sleep(0.2)

    consumer = await bus.consume(queue_name, ["job.*"], handler, prefetch=16)
    for i in range(10):
        await bus.publish("job.run", b"%d" % i)
    await seen.until(lambda: len(seen.bodies) == 10)
    await consumer.close(grace=5)
    assert await nothing_left(bus, queue_name) == []
