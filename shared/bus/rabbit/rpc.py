"""Request/reply on RabbitMQ with direct reply-to (`amq.rabbitmq.reply-to`), no reply queues.

Guarantees:
- A request gets exactly one reply or, after `timeout`, `BusTimeoutError`; a late reply is
  dropped. Replies are matched by correlation id, so concurrent requests never mix.
- A request carries `expiration=timeout`: one that nobody took in time is not processed later.
  The broker drops it only while it is queued (quorum queues too); once delivered into a
  consumer's prefetch it is the consumer's to check, by the deadline header `rpc.call` adds
  (roomcast.shared.rpc.expired).
- RabbitMQ wants the reply-to consumer on the channel that publishes the requests, and aio-pika
  does not restore it after a reconnect (it is no declared queue): `ensure_consumer` starts it
  again on the next request once the publishing channel was replaced.

The consumer is started on aiormq's channel under aio-pika's robust one (aio-pika's queue API
cannot consume a pseudo-queue without declaring it). That reach-in is `underlay_channel`, the
one function that depends on aio-pika's internals (subscriptions consume through it too, to skip
aio-pika's per-delivery message object); tests/unit/test_aio_pika_reach_in.py fails loudly when
a new aio-pika changes it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping

import structlog
from aio_pika.abc import AbstractRobustChannel
from aiormq import spec
from aiormq.abc import AbstractChannel, DeliveredMessage

from ..base import BusTimeoutError, Message
from .connection import Publisher, broker_op

log = structlog.get_logger(__name__)

REPLY_TO = "amq.rabbitmq.reply-to"
DEFAULT_EXCHANGE = ""  # routes by queue name: a reply goes straight to its requester
TRANSIENT = 1  # delivery mode: requests and replies are not worth a disk write


async def underlay_channel(channel: AbstractRobustChannel) -> AbstractChannel:
    """aiormq's channel under a robust aio-pika channel, once it is (re)open: the reach-in."""
    await channel.ready()
    return await channel.get_underlay_channel()


class Replies:
    """The direct reply-to consumer and the requests waiting for their reply."""

    def __init__(self, op_timeout: float) -> None:
        self._op_timeout = op_timeout
        self._lock = asyncio.Lock()
        self._underlay: AbstractChannel | None = None
        self._waiting: dict[str, asyncio.Future[bytes]] = {}

    async def ensure_consumer(self, channel: AbstractRobustChannel) -> None:
        """Consume direct reply-to on the publishing channel; again after it was replaced."""
        async with self._lock:
            underlay = await underlay_channel(channel)
            if underlay is self._underlay and not underlay.is_closed:
                return
            await underlay.basic_consume(REPLY_TO, self._on_reply, no_ack=True)
            self._underlay = underlay

    async def _on_reply(self, delivered: DeliveredMessage) -> None:
        future = self._waiting.get(delivered.header.properties.correlation_id or "")
        if future is None or future.done():
            log.debug("late reply dropped", key=delivered.routing_key)
            return
        future.set_result(delivered.body)

    async def request(
        self,
        publisher: Publisher,
        routing_key: str,
        body: bytes,
        *,
        timeout: float,
        headers: Mapping[str, str] | None,
    ) -> bytes:
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        properties = spec.Basic.Properties(
            headers=dict(headers) if headers else None,
            delivery_mode=TRANSIENT,
            correlation_id=correlation_id,
            reply_to=REPLY_TO,
            expiration=str(int(timeout * 1000)),  # ms: nobody takes it after the caller gave up
        )
        try:
            async with asyncio.timeout(timeout):
                async with broker_op("direct reply-to", self._op_timeout):
                    await self.ensure_consumer(publisher.channel)
                await publisher.send(routing_key, body, properties)
                return await future
        except TimeoutError as exc:
            raise BusTimeoutError(f"no reply to {routing_key!r} within {timeout:g}s") from exc
        finally:
            self._waiting.pop(correlation_id, None)

    async def reply(self, publisher: Publisher, request: Message, body: bytes) -> None:
        """Answer `request` through the default exchange; a no-op if it wants no reply."""
        if request.reply_to is None:
            return
        properties = spec.Basic.Properties(
            delivery_mode=TRANSIENT, correlation_id=request.correlation_id
        )
        await publisher.send(request.reply_to, body, properties, exchange=DEFAULT_EXCHANGE)

    def fail_all(self, error: Exception) -> None:
        """The bus is closing: every waiting request fails now."""
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._underlay = None
