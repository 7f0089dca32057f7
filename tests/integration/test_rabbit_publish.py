"""RabbitBus publishes through aiormq's `basic_publish` with only the properties it sets
(`Publisher.send`): on the broker a message still has its headers, its delivery mode and an id;
a publish the broker refuses raises `BusUnavailableError`; and a traced publish
(`bus.trace`, ROOMCAST_TRACE_STAGES) gets its stages stamped and recorded on the way through a
real broker. Publishes of one loop turn are in flight together and leave in one write of the
corked socket (shared/bus/rabbit/corking.py), still in order and each confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import REGISTRY

from roomcast.shared.bus import BusUnavailableError, Message, trace
from roomcast.shared.bus.rabbit import RabbitBus
from roomcast.shared.bus.rabbit.corking import CorkedWriter
from roomcast.shared.topics import Header
from tests.servers.rabbitmq import machine_broker_url, private_exchange_bus

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus() -> AsyncIterator[RabbitBus]:
    async with private_exchange_bus() as bus:
        yield bus


@contextlib.asynccontextmanager
async def received(
    bus: RabbitBus, pattern: str
) -> AsyncIterator[asyncio.Queue[AbstractIncomingMessage]]:
    """What the bus publishes on `pattern`, as a queue of its own on another connection sees it."""
    got: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    async with await aio_pika.connect(machine_broker_url()) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(bus.exchange_name, pattern)
        await queue.consume(got.put, no_ack=True)
        yield got


async def test_a_message_arrives_with_its_headers_mode_and_an_id(bus: RabbitBus) -> None:
    async with received(bus, "room.#") as got:
        headers = {"origin": "c1", "id": "m1"}
        await bus.publish("room.a.updateChat", b"one", headers=headers, persistent=True)
        await bus.publish("room.a.typing", b"two")
        first = await asyncio.wait_for(got.get(), 5)
        second = await asyncio.wait_for(got.get(), 5)
    assert headers == {"origin": "c1", "id": "m1"}  # the caller's dict is not changed
    assert (first.body, first.routing_key) == (b"one", "room.a.updateChat")
    assert first.headers == headers
    assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert (second.body, second.headers) == (b"two", {})
    assert second.delivery_mode == aio_pika.DeliveryMode.NOT_PERSISTENT
    assert first.message_id and second.message_id and first.message_id != second.message_id
    assert first.correlation_id is None and first.reply_to is None  # nothing else is set


async def test_a_publish_the_broker_refuses_raises_unavailable(bus: RabbitBus) -> None:
    connection = await aio_pika.connect(machine_broker_url())
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(bus.exchange_name)
    with pytest.raises(BusUnavailableError):  # 404: the broker closes the publishing channel
        await bus.publish("room.a.updateChat", b"lost", persistent=True)


async def test_publish_waits_for_the_confirm_and_a_nack_raises_unavailable(bus: RabbitBus) -> None:
    """A queue that refuses what it has no room for makes the broker nack the publish: only a
    publish that waits for its confirm can know, and it must not pass silently."""
    connection = await aio_pika.connect(machine_broker_url())
    async with connection:
        channel = await connection.channel()
        full = await channel.declare_queue(
            exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        await full.bind(bus.exchange_name, "room.full.*")
        with pytest.raises(BusUnavailableError):
            await bus.publish("room.full.updateChat", b"no room", persistent=True)
        await bus.publish("room.other.updateChat", b"fine", persistent=True)  # channel still up


async def test_a_publish_the_broker_never_confirms_raises_unavailable_within_the_bound(
    bus: RabbitBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = bus._publisher
    assert publisher is not None
    underlay = await publisher.channel.get_underlay_channel()

    async def never_confirmed(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(60)

    monkeypatch.setattr(underlay, "basic_publish", never_confirmed)
    monkeypatch.setattr(publisher, "_op_timeout", 0.2)
    with pytest.raises(BusUnavailableError, match="no answer from the broker"):
        await bus.publish("room.a.updateChat", b"unconfirmed", persistent=True)


async def test_a_traced_publish_records_every_stage_through_the_broker(
    bus: RabbitBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace, "ENABLED", True)

    def count(stage: str) -> float:
        labels = {"stage": stage}
        return REGISTRY.get_sample_value("roomcast_stage_seconds_count", labels) or 0.0

    got: asyncio.Queue[Message] = asyncio.Queue()

    async def handler(message: Message) -> None:
        await got.put(message)

    sub = await bus.subscribe(handler, name="traced")
    await sub.bind("room.t.*")
    before = {stage: count(stage) for stage in trace.STAGES}
    received = trace.now()
    await bus.publish("room.t.updateChat", b"x", headers={Header.TRACE_RECEIVED: received})
    message = await asyncio.wait_for(got.get(), 5)
    stamps = [
        int(message.headers[h])
        for h in (Header.TRACE_RECEIVED, Header.TRACE_PUBLISHED, Header.TRACE_DELIVERED)
    ]
    assert stamps == sorted(stamps)
    assert stamps[0] == int(received)
    await sub.close()  # (the stages were recorded as the handler returned, before got.get())
    assert {stage: count(stage) - before[stage] for stage in trace.STAGES} == dict.fromkeys(
        trace.STAGES, 1.0
    )
    plain = await bus.subscribe(handler, name="plain")
    await plain.bind("room.t.*")
    await bus.publish("room.t.updateChat", b"plain")  # untraced on a traced bus: no stages
    untraced = await asyncio.wait_for(got.get(), 5)
    assert Header.TRACE_PUBLISHED not in untraced.headers
    await plain.close()
    assert count("confirm") == before["confirm"] + 1


async def test_publishes_of_one_turn_go_in_one_write_in_order_each_confirmed(
    bus: RabbitBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    original = CorkedWriter.uncork

    def counted(self: CorkedWriter) -> None:
        if self._corked:
            writes.append(len(self._corked))
        original(self)

    monkeypatch.setattr(CorkedWriter, "uncork", counted)
    async with received(bus, "room.burst.*") as got:
        writes.clear()
        await asyncio.gather(
            *(bus.publish("room.burst.updateChat", str(n).encode()) for n in range(50))
        )
        bodies = [(await asyncio.wait_for(got.get(), 5)).body for _ in range(50)]
    assert bodies == [str(n).encode() for n in range(50)]
    assert max(writes) >= 10, f"the burst's frames were written {writes} at a time"
