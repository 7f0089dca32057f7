"""`RabbitBus`: the `Bus` on RabbitMQ through aio-pika (the guarantees are in `base`).

Topology: one durable topic exchange. A subscription is an exclusive auto-delete queue consumed
without acks (it dies with its owner, so acks would buy nothing); a work queue is a durable quorum
queue consumed with acks; requests use direct reply-to.

Channels: one confirm channel publishes everything and also consumes `amq.rabbitmq.reply-to`
(RabbitMQ requires both on the same channel). Each subscription and each consumer has its own
channel, so a consumer's prefetch and its close (which requeues what it has not acknowledged)
stay its own.

Recovery: `connect_robust` re-declares the exchange, queues, bindings and consumers after a
reconnect, but it knows nothing of the direct reply-to consumer (not a declared queue): that one
is re-created by the next request once the publishing channel has been replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
    AbstractRobustQueue,
    DeliveryMode,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq.abc import AbstractChannel, DeliveredMessage
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential
from yarl import URL

from .base import BusTimeoutError, BusUnavailableError, Handler, Message, RejectMessage

log = structlog.get_logger(__name__)

_REPLY_TO = "amq.rabbitmq.reply-to"
_NOT_IN_QUEUE_NAMES = re.compile(r"[^a-zA-Z0-9_.:-]")
_REQUEUE_DELAY = 0.05
# A transient subscription is consumed with no_ack, which basic.qos does not limit anyway.
_SUBSCRIPTION_PREFETCH = 1000


def _headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (raw or {}).items()}


def _message(incoming: AbstractIncomingMessage) -> Message:
    return Message(
        incoming.routing_key or "",
        incoming.body,
        _headers(incoming.headers),
        incoming.reply_to,
        incoming.correlation_id,
    )


@contextlib.asynccontextmanager
async def _broker_op(what: str, limit: float) -> AsyncIterator[None]:
    """Bound a broker round trip and turn aio-pika's failures into the bus's own error.

    Robust channels wait for the reconnection without limit, which must not hang a caller.
    """
    try:
        async with asyncio.timeout(limit):
            yield
    except TimeoutError as exc:  # before CONNECTION_EXCEPTIONS: TimeoutError is an OSError
        raise BusUnavailableError(f"{what}: no answer from the broker in {limit:g}s") from exc
    except CONNECTION_EXCEPTIONS as exc:
        raise BusUnavailableError(f"{what}: {exc!r}") from exc


async def _close_channel(channel: AbstractRobustChannel, limit: float) -> None:
    try:
        async with _broker_op("close channel", limit):
            await channel.close()
    except BusUnavailableError:
        log.warning("channel close not confirmed; it goes with the connection")


class _RabbitSubscription:
    """An exclusive queue whose deliveries go through one task, so per-publisher order holds
    (aio-pika runs every delivery as its own task)."""

    def __init__(
        self,
        bus: RabbitBus,
        channel: AbstractRobustChannel,
        queue: AbstractRobustQueue,
        handler: Handler,
    ) -> None:
        self._bus = bus
        self._channel = channel
        self.queue = queue
        self._handler = handler
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.queue.consume(self._on_delivery, no_ack=True)
        self._task = asyncio.create_task(self._run(), name=f"bus-sub-{self.queue.name}")

    async def _on_delivery(self, incoming: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(_message(incoming))

    async def _run(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                await self._handler(message)
            except Exception:
                # At-most-once: a failed broadcast delivery is dropped.
                log.exception("subscription handler failed", queue=self.queue.name)

    async def bind(self, pattern: str) -> None:
        async with _broker_op(f"bind {pattern!r}", self._bus.op_timeout):
            await self.queue.bind(self._bus.exchange_name, pattern)

    async def unbind(self, pattern: str) -> None:
        async with _broker_op(f"unbind {pattern!r}", self._bus.op_timeout):
            await self.queue.unbind(self._bus.exchange_name, pattern)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._bus.subscriptions.discard(self)

    async def close(self) -> None:
        self.stop()
        try:
            async with _broker_op("delete subscription queue", self._bus.op_timeout):
                await self.queue.delete(if_unused=False, if_empty=False)
        except BusUnavailableError:
            log.warning("subscription queue not deleted; it goes with the connection")
        finally:  # a closed robust channel is never restored, whatever happened above
            await _close_channel(self._channel, self._bus.op_timeout)


class _RabbitConsumer:
    """One consumer of a work queue on its own channel: acks after the handler returns."""

    def __init__(
        self,
        bus: RabbitBus,
        channel: AbstractRobustChannel,
        queue: AbstractRobustQueue,
        handler: Handler,
    ) -> None:
        self._bus = bus
        self._channel = channel
        self._queue = queue
        self._handler = handler
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
            await self._handler(_message(incoming))
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
        self._bus.consumers.discard(self)
        try:
            if self._tag:
                async with _broker_op("cancel consumer", self._bus.op_timeout):
                    await self._queue.cancel(self._tag)
            if self._in_flight:
                await asyncio.wait(list(self._in_flight), timeout=grace)
        except BusUnavailableError:
            log.warning("consumer not cancelled; its channel is closed anyway")
        finally:
            self.abort()
            await _close_channel(self._channel, self._bus.op_timeout)

    def abort(self) -> None:
        for task in self._in_flight:
            task.cancel()


class RabbitBus:
    """A `Bus` on RabbitMQ; every failure surfaces as `BusUnavailableError`."""

    def __init__(
        self,
        url: str,
        *,
        exchange: str = "roomcast",
        name: str = "roomcast",
        confirm_timeout: float = 10.0,
        connect_timeout: float = 30.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        self.name = name
        self.exchange_name = exchange
        self.op_timeout = confirm_timeout
        self._url = url
        self._connect_timeout = connect_timeout
        self._reconnect_interval = reconnect_interval
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractRobustExchange | None = None
        self._reply_channel: AbstractChannel | None = None
        self._reply_lock = asyncio.Lock()
        self._replies: dict[str, asyncio.Future[bytes]] = {}
        self.subscriptions: set[_RabbitSubscription] = set()
        self.consumers: set[_RabbitConsumer] = set()

    def __repr__(self) -> str:
        url = URL(self._url)
        return f"<RabbitBus {self.name} {url.with_password('***') if url.password else url}>"

    async def connect(self) -> None:
        """Retry the first connection ourselves: `connect_robust` only recovers connections that
        once succeeded and fails at once when the broker is down at start-up (aio-pika #202)."""
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(self._connect_timeout),
                wait=wait_exponential(multiplier=0.2, max=3),
                retry=retry_if_exception_type(CONNECTION_EXCEPTIONS),
                before_sleep=lambda state: log.warning(
                    "broker not reachable; retrying", bus=repr(self), attempt=state.attempt_number
                ),
                reraise=True,
            ):
                with attempt:
                    connection = await aio_pika.connect_robust(
                        self._url,
                        client_properties={"connection_name": self.name},
                        reconnect_interval=self._reconnect_interval,
                        timeout=min(10.0, self._connect_timeout),
                    )
        except CONNECTION_EXCEPTIONS as exc:
            raise BusUnavailableError(
                f"{self!r}: no broker within {self._connect_timeout:g}s"
            ) from exc
        self._connection = connection
        try:
            async with _broker_op("declare exchange", self.op_timeout):
                self._channel = await connection.channel(publisher_confirms=True)
                self._exchange = await self._channel.declare_exchange(
                    self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
                )
        except BusUnavailableError:
            await self.close()
            raise

    async def close(self) -> None:
        for sub in list(self.subscriptions):
            sub.stop()
        for consumer in list(self.consumers):
            consumer.abort()
        self.consumers.clear()
        for future in self._replies.values():
            if not future.done():
                future.set_exception(BusUnavailableError("bus closed"))
        connection, self._connection = self._connection, None
        self._channel = self._exchange = self._reply_channel = None
        if connection is not None:
            await connection.close()

    @property
    def is_ready(self) -> bool:
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    def _open(
        self,
    ) -> tuple[AbstractRobustConnection, AbstractRobustChannel, AbstractRobustExchange]:
        if self._connection is None or self._channel is None or self._exchange is None:
            raise BusUnavailableError(f"{self!r} is not connected")
        return self._connection, self._channel, self._exchange

    async def _publish(
        self, exchange: AbstractExchange, message: aio_pika.Message, routing_key: str
    ) -> None:
        """Publish and wait for the confirm; not mandatory: a key nobody listens to is fine."""
        _, channel, _ = self._open()
        async with _broker_op(f"publish {routing_key!r}", self.op_timeout):
            await channel.ready()
            await exchange.publish(message, routing_key, mandatory=False)

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        persistent: bool = False,
    ) -> None:
        _, _, exchange = self._open()
        mode = DeliveryMode.PERSISTENT if persistent else DeliveryMode.NOT_PERSISTENT
        message = aio_pika.Message(body, headers=dict(headers or {}), delivery_mode=mode)
        await self._publish(exchange, message, routing_key)

    async def subscribe(self, handler: Handler, *, name: str = "") -> _RabbitSubscription:
        connection, _, _ = self._open()
        # aio-pika names even "server-named" robust queues itself, so that it can re-declare
        # them after a reconnect; a readable name helps in the management UI.
        label = _NOT_IN_QUEUE_NAMES.sub("-", f"{self.name}.{name or 'sub'}")[:200]
        queue_name = f"{label}.{uuid.uuid4().hex[:12]}"
        channel: AbstractRobustChannel | None = None
        try:
            async with _broker_op("subscribe", self.op_timeout):
                channel = await connection.channel(publisher_confirms=False)
                await channel.set_qos(prefetch_count=_SUBSCRIPTION_PREFETCH)
                queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
                sub = _RabbitSubscription(self, channel, queue, handler)
                await sub.start()
        except BusUnavailableError:
            if channel is not None:
                await _close_channel(channel, self.op_timeout)
            raise
        self.subscriptions.add(sub)
        return sub

    async def consume(
        self,
        queue: str,
        patterns: list[str],
        handler: Handler,
        *,
        prefetch: int = 64,
        single_active: bool = False,
    ) -> _RabbitConsumer:
        connection, _, _ = self._open()
        arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        if single_active:
            arguments["x-single-active-consumer"] = True
        channel: AbstractRobustChannel | None = None
        try:
            async with _broker_op(f"consume {queue!r}", self.op_timeout):
                channel = await connection.channel(publisher_confirms=False)
                await channel.set_qos(prefetch_count=max(1, prefetch))
                work = await channel.declare_queue(queue, durable=True, arguments=arguments)
                for pattern in patterns:
                    await work.bind(self.exchange_name, pattern)
                consumer = _RabbitConsumer(self, channel, work, handler)
                await consumer.start()
        except BusUnavailableError:
            if channel is not None:
                await _close_channel(channel, self.op_timeout)
            raise
        self.consumers.add(consumer)
        return consumer

    async def _ensure_reply_consumer(self, channel: AbstractRobustChannel) -> None:
        """Consume direct reply-to on the publishing channel; again after it was replaced."""
        async with self._reply_lock:
            await channel.ready()
            underlay = await channel.get_underlay_channel()
            if underlay is self._reply_channel and not underlay.is_closed:
                return
            await underlay.basic_consume(_REPLY_TO, self._on_reply, no_ack=True)
            self._reply_channel = underlay

    async def _on_reply(self, delivered: DeliveredMessage) -> None:
        future = self._replies.get(delivered.header.properties.correlation_id or "")
        if future is None or future.done():
            log.debug("late reply dropped", key=delivered.routing_key)
            return
        future.set_result(delivered.body)

    async def request(
        self,
        routing_key: str,
        body: bytes,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        _, channel, exchange = self._open()
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._replies[correlation_id] = future
        message = aio_pika.Message(
            body,
            headers=dict(headers or {}),
            correlation_id=correlation_id,
            reply_to=_REPLY_TO,
            expiration=timeout,  # nobody takes it after the caller gave up
        )
        try:
            async with asyncio.timeout(timeout):
                async with _broker_op("direct reply-to", self.op_timeout):
                    await self._ensure_reply_consumer(channel)
                await self._publish(exchange, message, routing_key)
                return await future
        except TimeoutError as exc:
            raise BusTimeoutError(f"no reply to {routing_key!r} within {timeout:g}s") from exc
        finally:
            self._replies.pop(correlation_id, None)

    async def reply(self, request: Message, body: bytes) -> None:
        if request.reply_to is None:
            return
        _, channel, _ = self._open()
        message = aio_pika.Message(body, correlation_id=request.correlation_id)
        await self._publish(channel.default_exchange, message, request.reply_to)
