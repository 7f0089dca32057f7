"""Fixtures of the bus contract suite: the same test bodies run on InMemoryBus (`unit`) and on
RabbitBus against the machine's broker (`integration`).

Every test gets its own exchange and queue names (uuid), so tests never see each other's
traffic, and on RabbitMQ its queues and exchange are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest

from roomcast.shared.bus import Bus, InMemoryBus
from roomcast.shared.bus.rabbit import RabbitBus
from tests.servers import PrivateRabbitNode, machine_broker_url


@dataclass
class BusEnv:
    """One test's bus and the unique names it uses."""

    kind: str
    bus: Bus
    exchange: str
    queues: list[str] = field(default_factory=list)
    url: str = ""
    others: list[Bus] = field(default_factory=list)

    def queue(self, label: str = "q") -> str:
        name = f"{self.exchange}.{label}.{uuid.uuid4().hex[:8]}"
        self.queues.append(name)
        return name

    async def another_bus(self, **options: Any) -> Bus:
        """A bus of the same kind with other options (say a small `inbox_limit`), connected now
        and closed with the test's own. A test publishes and subscribes on it alone: a second
        in-memory bus is a broker of its own; on RabbitMQ it shares the test's exchange."""
        other: Bus
        if self.kind == "memory":
            other = InMemoryBus(name=f"{self.exchange}-2", **options)
        else:
            other = RabbitBus(
                self.url, exchange=self.exchange, name=f"{self.exchange}-2", **options
            )
        await other.connect()
        self.others.append(other)
        return other


async def delete_rabbit_names(url: str, exchange: str, queues: list[str]) -> None:
    """Remove what a test declared, with a plain connection of its own."""
    connection = await aio_pika.connect(url, client_properties={"connection_name": "test-cleanup"})
    async with connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        await channel.exchange_delete(exchange)


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("rabbit", marks=pytest.mark.integration),
    ]
)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[BusEnv]:
    exchange = f"test-{uuid.uuid4().hex[:12]}"
    bus: Bus
    url = ""
    if request.param == "memory":
        bus = InMemoryBus(name=exchange)
    else:
        url = machine_broker_url()
        bus = RabbitBus(url, exchange=exchange, name=f"contract-{request.node.name}")
    await bus.connect()
    test_env = BusEnv(request.param, bus, exchange, url=url)
    try:
        yield test_env
    finally:
        for other in test_env.others:
            await other.close()
        await bus.close()
        if url:
            await delete_rabbit_names(url, exchange, test_env.queues)


@pytest.fixture
async def private_rabbit() -> AsyncIterator[PrivateRabbitNode]:
    """A RabbitMQ node of the test's own, which it may restart; stopped and deleted afterwards."""
    async with PrivateRabbitNode() as node:
        yield node


@dataclass
class Restartable:
    """A bus whose broker a test can take away and bring back: `outage()` is
    `InMemoryBus.outage()` on the memory bus, a stop_app/start_app of a private node on RabbitMQ."""

    kind: str
    bus: Bus
    outage: Callable[[], AbstractAsyncContextManager[None]]


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("rabbit", marks=pytest.mark.integration),
    ]
)
async def restartable(request: pytest.FixtureRequest) -> AsyncIterator[Restartable]:
    if request.param == "memory":
        memory = InMemoryBus(name="restartable")
        await memory.connect()
        try:
            yield Restartable("memory", memory, memory.outage)
        finally:
            await memory.close()
        return

    async with PrivateRabbitNode() as node:

        @contextlib.asynccontextmanager
        async def broker_away() -> AsyncIterator[None]:
            await asyncio.to_thread(node.stop_app)
            try:
                yield
            finally:
                await asyncio.to_thread(node.start_app)

        rabbit = RabbitBus(node.url, exchange="restartable", name="restartable", confirm_timeout=3)
        await rabbit.connect()
        try:
            yield Restartable("rabbit", rabbit, broker_away)
        finally:
            await rabbit.close()
