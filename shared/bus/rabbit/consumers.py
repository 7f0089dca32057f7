"""Work-queue consumers on RabbitMQ: durable quorum queues, one channel per consumer.

Guarantees:
- At-least-once: a delivery is acknowledged only after the handler returned; `RejectMessage`
  drops it (reject without requeue); any other exception requeues it (after a short pause, so a
  failing handler does not spin). A delivery whose channel died before it was settled is requeued
  by the broker itself.
- The consumer's prefetch and close are its own (its own channel): `close()` cancels the consumer,
  lets running handlers finish (bounded by `grace`), then closes the channel, which hands whatever
  is still unacknowledged back to the queue.
- With `single_active` (`x-single-active-consumer`) one consumer at a time receives, so the
  queue's FIFO order is the processing order.
- After a reconnect aio-pika re-declares the queue, its bindings and the consumer; nothing
  published to a durable queue is lost meanwhile, so there is no gap to report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from ..base import BusUnavailableError, Handler, RejectMessage
from .connection import broker_op, close_channel
from .messages import to_message

log = structlog.get_logger(__name__)

_REQUEUE_DELAY = 0.05


class RabbitConsumer:
    """One consumer of a work queue on its own channel: acks after the handler returns."""

    def __init__(
        self,
        channel: AbstractRobustChannel,
        queue: AbstractRobustQueue,
        handler: Handler,
        *,
        op_timeout: float,
        forget: Callable[[RabbitConsumer], None],
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._handler = handler
        self._op_timeout = op_timeout
        self._forget = forget
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._tag = ""

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_delivery)

    async def _on_delivery(self, incoming: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        where = {"queue": self._queue.name, "key": incoming.routing_key}
        try:
            await self._handler(to_message(incoming))
        except RejectMessage:
            log.warning("message rejected", **where)
            await self._settle(incoming.reject(requeue=False))
        except Exception:
            log.exception("work handler failed; requeued", **where)
            await asyncio.sleep(_REQUEUE_DELAY)
            await self._settle(incoming.nack(requeue=True))
        else:
            await self._settle(incoming.ack())
        finally:
            self._in_flight.discard(task)

    async def _settle(self, settle: Awaitable[None]) -> None:
        try:
            await settle
        except CONNECTION_EXCEPTIONS as exc:
            # The channel is gone: the broker requeues the delivery by itself.
            log.warning("could not settle a delivery", error=repr(exc))

    async def close(self, grace: float = 5.0) -> None:
        """Stop new deliveries, let running handlers finish (bounded), then close the channel,
        which hands whatever is still unacknowledged back to the queue."""
        self._forget(self)
        try:
            if self._tag:
                async with broker_op("cancel consumer", self._op_timeout):
                    await self._queue.cancel(self._tag)
            if self._in_flight:
                await asyncio.wait(list(self._in_flight), timeout=grace)
        except BusUnavailableError:
            log.warning("consumer not cancelled; its channel is closed anyway")
        finally:
            self.abort()
            await close_channel(self._channel, self._op_timeout)

    def abort(self) -> None:
        for task in self._in_flight:
            task.cancel()


async def open_consumer(
    connection: AbstractRobustConnection,
    queue: str,
    patterns: list[str],
    handler: Handler,
    *,
    exchange: str,
    prefetch: int,
    single_active: bool,
    op_timeout: float,
    forget: Callable[[RabbitConsumer], None],
) -> RabbitConsumer:
    """Declare the durable queue (if needed), bind `patterns`, and consume it on a new channel."""
    arguments: dict[str, Any] = {"x-queue-type": "quorum"}
    if single_active:
        arguments["x-single-active-consumer"] = True
    channel: AbstractRobustChannel | None = None
    try:
        async with broker_op(f"consume {queue!r}", op_timeout):
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=max(1, prefetch))
            work = await channel.declare_queue(queue, durable=True, arguments=arguments)
            for pattern in patterns:
                await work.bind(exchange, pattern)
            consumer = RabbitConsumer(channel, work, handler, op_timeout=op_timeout, forget=forget)
            await consumer.start()
    except BusUnavailableError:
        if channel is not None:
            await close_channel(channel, op_timeout)
        raise
    return consumer
