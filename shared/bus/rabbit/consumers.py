"""Work-queue consumers on RabbitMQ: durable quorum queues, one channel per consumer.

Guarantees:
- At-least-once: a delivery is acknowledged only after the handler returned; `RejectMessage`
  drops it (reject without requeue); any other exception requeues it (after a short pause, so a
  failing handler does not spin). A delivery whose channel died before it was settled is requeued
  by the broker itself.
- Acks go in groups (`acks.GroupAcks`): the deliveries whose handlers finished in one loop turn
  are acknowledged by one `multiple` ack up to the newest one whose predecessors are all
  settled; a reject or requeue is still sent singly, before the group that spans it, and a
  delivery that finished behind one still running is acked singly in the same turn.
- The consumer's prefetch and close are its own (its own channel): `close()` cancels the consumer,
  lets running handlers finish (bounded by `grace`), sends their settlements, then closes the
  channel, which hands whatever is still unacknowledged back to the queue.
- With `single_active` (`x-single-active-consumer`) one consumer at a time receives, so the
  queue's FIFO order is the processing order.
- The queue is consumed on aiormq's channel under the robust one (`rpc.underlay_channel`, as
  subscriptions do), not through aio-pika's queue: that builds an `IncomingMessage` and starts a
  second task for every delivery. aio-pika therefore does not restore this consumer itself: it
  re-declares the queue and its bindings when it reopens the channel (after a reconnect), and
  the channel's reopen callback consumes again (retried while the channel stays open; a channel
  that closes meanwhile reopens and calls it anew). A consumer the broker cancels (its queue was
  deleted) declares the queue and its bindings again and consumes again. Nothing published to a
  durable queue is lost meanwhile, so there is no gap to report.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from aiormq import spec
from aiormq.abc import DeliveredMessage

from ..base import BusUnavailableError, Handler, RejectMessage
from .acks import GroupAcks, Outcome
from .connection import broker_op, close_channel
from .messages import from_delivered
from .rpc import underlay_channel

log = structlog.get_logger(__name__)

_REQUEUE_DELAY = 0.05
_RETRY_DELAY = 1.0  # between tries to consume again on a channel that stayed open


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
        self._acks: GroupAcks | None = None
        self._reconsume: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        await self._consume()
        self._channel.reopen_callbacks.add(self._on_reopen)

    async def _consume(self) -> None:
        """Consume the queue on the robust channel's current aiormq channel, with a fresh
        `GroupAcks` (delivery tags are the channel's own)."""
        underlay = await underlay_channel(self._channel)
        tag = f"roomcast.{uuid.uuid4().hex}"
        self._acks = GroupAcks(underlay, name=self._queue.name)
        self._tag = tag
        underlay.on_consumer_cancel_callbacks.add(self._on_cancel)
        await underlay.basic_consume(self._queue.name, self._on_delivery, consumer_tag=tag)

    async def _on_delivery(self, delivered: DeliveredMessage) -> None:
        """aiormq runs this as a task of its own per delivery, in delivery order."""
        acks = self._acks
        if acks is None or acks.channel is not delivered.channel:
            return  # a stale channel's delivery: the broker requeues it with that channel
        tag = delivered.delivery_tag or 0
        acks.delivered(tag)  # before any await: in delivery order
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        outcome = Outcome.REQUEUE
        try:
            await self._handler(from_delivered(delivered))
            outcome = Outcome.ACK
        except RejectMessage:
            log.warning("message rejected", queue=self._queue.name, key=delivered.routing_key)
            outcome = Outcome.REJECT
        except Exception:
            log.exception(
                "work handler failed; requeued", queue=self._queue.name, key=delivered.routing_key
            )
            await asyncio.sleep(_REQUEUE_DELAY)
        finally:
            # a cancelled handler (close, abort) is requeued too: nothing after it may be
            # acknowledged in a group past an unsettled delivery
            self._in_flight.discard(task)
            acks.settle(tag, outcome)

    def _on_cancel(self, frame: spec.Basic.Cancel) -> None:
        """The broker cancelled the consumer (its queue was deleted): declare and consume again."""
        if frame.consumer_tag != self._tag or self._closing:
            return
        log.warning("consumer cancelled by the broker; consuming again", queue=self._queue.name)
        self._again(declare=True)

    def _on_reopen(self, _channel: Any) -> None:
        """aio-pika restored the channel, the queue and its bindings: consume again, in a task
        of its own (the channel is ready only once its reopen callbacks have returned)."""
        if not self._closing:
            self._again(declare=False)

    def _again(self, *, declare: bool) -> None:
        if self._reconsume is not None and not self._reconsume.done():
            self._reconsume.cancel()
        self._reconsume = asyncio.get_running_loop().create_task(
            self._consume_again(declare), name=f"bus-reconsume-{self._queue.name}"
        )
        self._reconsume.add_done_callback(self._reconsume_done)

    async def _consume_again(self, declare: bool) -> None:
        """Consume again; a try that fails on a channel still open is repeated, a closed
        channel's reopen tries anew."""
        while not self._closing:
            try:
                async with broker_op("consume again", self._op_timeout):
                    if declare:
                        await self._queue.restore()  # declare and bind (aio-pika's record)
                    await self._consume()
            except BusUnavailableError as exc:
                log.warning("work queue not consumed again", queue=self._queue.name, error=str(exc))
                if self._channel.is_closed:
                    return
                await asyncio.sleep(_RETRY_DELAY)
                continue
            log.info("work queue consumed again", queue=self._queue.name)
            return

    def _reconsume_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "consuming again failed",
                queue=self._queue.name,
                error=repr(task.exception()),
                exc_info=task.exception(),
            )

    async def close(self, grace: float = 5.0) -> None:
        """Stop new deliveries, let running handlers finish (bounded) and send their
        settlements, then close the channel, which hands whatever is still unacknowledged back
        to the queue."""
        self._closing = True
        self._forget(self)
        self._channel.reopen_callbacks.discard(self._on_reopen)
        if self._reconsume is not None:
            self._reconsume.cancel()
        acks = self._acks
        try:
            if acks is not None and self._tag and not acks.channel.is_closed:
                async with broker_op("cancel consumer", self._op_timeout):
                    await acks.channel.basic_cancel(self._tag)
            if self._in_flight:
                await asyncio.wait(list(self._in_flight), timeout=grace)
            if acks is not None:
                async with broker_op("settle deliveries", self._op_timeout):
                    await acks.drain()
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
