"""RabbitMQ for the tests.

`machine_broker_url()` is the machine's broker on 127.0.0.1:5672, which the test command makes sure
of (scripts/ensure-rabbitmq.sh); the tests never skip for want of it, and never stop or restart it.

`PrivateRabbitNode` is a throw-away node of its own for tests that restart the broker. It lives in
the package (`roomcast.bench.rabbitnode`), since `roomcast bench chaos` restarts one too.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika

from roomcast.bench.rabbitnode import PrivateRabbitNode, free_port, port_answers
from roomcast.shared.bus.rabbit import RabbitBus

MACHINE_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"

__all__ = [
    "MACHINE_BROKER_URL",
    "PrivateRabbitNode",
    "free_port",
    "machine_broker_url",
    "port_answers",
    "private_exchange_bus",
]


def machine_broker_url() -> str:
    """The machine's broker, after checking it answers (it is a precondition, not optional)."""
    if not port_answers(5672):
        raise RuntimeError(
            "No RabbitMQ answers on 127.0.0.1:5672. The test command starts it: run "
            "scripts/ensure-rabbitmq.sh (it installs Debian's rabbitmq-server if needed)."
        )
    return MACHINE_BROKER_URL


@asynccontextmanager
async def private_exchange_bus() -> AsyncIterator[RabbitBus]:
    """A connected `RabbitBus` on the machine's broker, on an exchange of its own (deleted after)."""
    exchange = f"test-{uuid.uuid4().hex[:12]}"
    bus = RabbitBus(machine_broker_url(), exchange=exchange, name=exchange, confirm_timeout=5)
    await bus.connect()
    try:
        yield bus
    finally:
        await bus.close()
        connection = await aio_pika.connect(machine_broker_url())
        async with connection:
            channel = await connection.channel()
            await channel.exchange_delete(exchange)
