"""Broadcast subscriptions on RabbitMQ: one exclusive, auto-delete queue each, on its own channel.

Guarantees:
- At-most-once: the queue is consumed without acks (it dies with its owner, so acks would buy
  nothing), and whatever matches its bindings while it is bound is delivered once, in the order
  each publisher published it: deliveries go through one bounded `Inbox` and one handler task
  (aiormq runs every delivery callback as its own task, which alone would not keep order; the
  callback only puts the delivery in the inbox, before any await, so tasks started in order put
  in order).
- The queue is consumed on aiormq's channel under the robust one (`rpc.underlay_channel`), not
  through aio-pika's queue: that builds an `IncomingMessage` and starts a second task for every
  delivery, and the gateway reads none of it. aio-pika therefore does not restore this consumer;
  the channel's reopen does (below).
- `bind`/`unbind` return once the broker confirmed them, or raise `BusUnavailableError`.
- Losses are reported, never silent: the exclusive queue dies with the connection. When the
  channel closes, the inbox marks the loss there (`on_loss`, after every delivery the closed
  channel handed over). aio-pika declares the queue again after a reconnect, with every binding,
  and then calls the channel's reopen callbacks; ours starts a task that consumes the queue again
  once the channel is ready and only then reports the gap to the inbox, which calls `on_gap`
  (deliveries of the new queue may already have reached the handler by then: hence the mark).
  What is routed to the queue before the consumer is back waits in it, so nothing is lost there.
  A consume that fails is logged; the channel it failed on closes, and its next reopen retries. A channel that alone was closed and reopened is reported
  the same way (what it had been sent but not handed over is gone). Overflow of the inbox is
  reported by the inbox itself.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from aiormq.abc import DeliveredMessage

from .. import trace
from ..base import BusUnavailableError, GapHandler, Handler, LossHandler
from ..inbox import Inbox
from .connection import broker_op, close_channel, run_to_end
from .messages import from_delivered
from .rpc import underlay_channel

log = structlog.get_logger(__name__)

_NOT_IN_QUEUE_NAMES = re.compile(r"[^a-zA-Z0-9_.:-]")
# A transient subscription is consumed with no_ack, which basic.qos does not limit anyway.
_PREFETCH = 1000
_RETRY_DELAY = 1.0  # between tries to consume a restored queue whose channel stayed open


class RabbitSubscription:
    """An exclusive queue, its channel, and the inbox that feeds the handler."""

    def __init__(
        self,
        channel: AbstractRobustChannel,
        queue: AbstractRobustQueue,
        inbox: Inbox,
        *,
        exchange: str,
        op_timeout: float,
        forget: Callable[[RabbitSubscription], None],
    ) -> None:
        self._channel = channel
        self.queue = queue
        self.inbox = inbox
        self._exchange = exchange
        self._op_timeout = op_timeout
        self._forget = forget
        self._on_delivery = self._traced if trace.ENABLED else self._deliver
        self._reconsume: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        await self._consume()
        self.inbox.start()
        self._channel.close_callbacks.add(self._on_close)
        self._channel.reopen_callbacks.add(self._on_reopen)

    async def _consume(self) -> None:
        underlay = await underlay_channel(self._channel)
        await underlay.basic_consume(self.queue.name, self._on_delivery, no_ack=True)

    async def _deliver(self, delivered: DeliveredMessage) -> None:
        self.inbox.put(from_delivered(delivered))

    async def _traced(self, delivered: DeliveredMessage) -> None:
        self.inbox.put(trace.delivered(from_delivered(delivered)))

    def _on_close(self, _channel: Any, _exc: BaseException | None = None) -> None:
        """The channel is gone, and with it the queue: losses may begin here."""
        self.inbox.lost()

    def _on_reopen(self, _channel: Any) -> None:
        """aio-pika restored the channel, the queue and every binding: consume again, in a task
        of its own (the channel is ready only once its reopen callbacks have returned)."""
        if self._stopped:
            return
        self._reconsume = asyncio.get_running_loop().create_task(
            self._consume_again(), name=f"bus-reconsume-{self.queue.name}"
        )

    async def _consume_again(self) -> None:
        """Consume the restored queue, then report the gap: from here on nothing is lost. A try
        that fails on a channel still open is repeated; a closed channel's reopen tries anew."""
        while not self._stopped:
            try:
                async with broker_op("consume again", self._op_timeout):
                    await self._consume()
            except BusUnavailableError as exc:
                log.warning(
                    "subscription not consumed again", queue=self.queue.name, error=str(exc)
                )
                if self._channel.is_closed:
                    return
                await asyncio.sleep(_RETRY_DELAY)
                continue
            self.inbox.gap("reconnect")
            return

    async def bind(self, pattern: str) -> None:
        await run_to_end(
            f"bind {pattern!r}", self._op_timeout, self.queue.bind(self._exchange, pattern)
        )

    async def unbind(self, pattern: str) -> None:
        await run_to_end(
            f"unbind {pattern!r}", self._op_timeout, self.queue.unbind(self._exchange, pattern)
        )

    async def stop(self) -> None:
        """Stop handing messages over; the queue goes with the connection."""
        self._stopped = True
        if self._reconsume is not None:
            self._reconsume.cancel()
        self._channel.reopen_callbacks.discard(self._on_reopen)
        self._channel.close_callbacks.discard(self._on_close)
        self._forget(self)
        await self.inbox.close()

    async def close(self) -> None:
        await self.stop()
        try:
            async with broker_op("delete subscription queue", self._op_timeout):
                await self.queue.delete(if_unused=False, if_empty=False)
        except BusUnavailableError:
            log.warning("subscription queue not deleted; it goes with the connection")
        finally:  # a closed robust channel is never restored, whatever happened above
            await close_channel(self._channel, self._op_timeout)


def queue_name(bus_name: str, name: str) -> str:
    """A readable, unique queue name. aio-pika names even "server-named" robust queues itself,
    so that it can declare them again after a reconnect; a readable one helps in the UI."""
    label = _NOT_IN_QUEUE_NAMES.sub("-", f"{bus_name}.{name or 'sub'}")[:200]
    return f"{label}.{uuid.uuid4().hex[:12]}"


async def open_subscription(
    connection: AbstractRobustConnection,
    handler: Handler,
    *,
    bus_name: str,
    name: str,
    exchange: str,
    op_timeout: float,
    inbox_limit: int,
    on_gap: GapHandler | None,
    on_loss: LossHandler | None = None,
    forget: Callable[[RabbitSubscription], None],
) -> RabbitSubscription:
    """A channel of its own, the queue declared on it, consuming."""
    channel: AbstractRobustChannel | None = None
    try:
        async with broker_op("subscribe", op_timeout):
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=_PREFETCH)
            queue = await channel.declare_queue(
                queue_name(bus_name, name), exclusive=True, auto_delete=True
            )
            inbox = Inbox(
                trace.timed(handler) if trace.ENABLED else handler,
                name=queue.name,
                label=name,
                limit=inbox_limit,
                on_gap=on_gap,
                on_loss=on_loss,
            )
            sub = RabbitSubscription(
                channel, queue, inbox, exchange=exchange, op_timeout=op_timeout, forget=forget
            )
            await sub.start()
    except BusUnavailableError:
        if channel is not None:
            await close_channel(channel, op_timeout)
        raise
    return sub
