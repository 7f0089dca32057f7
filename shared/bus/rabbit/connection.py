"""The broker connection: opening it, bounding every round trip, publishing with confirms.

Guarantees:
- `open_connection` retries the *first* connection itself (exponential backoff, up to
  `connect_timeout`): `connect_robust` only recovers connections that once succeeded and fails at
  once when the broker is down at start-up (aio-pika #202). Later drops are aio-pika's to recover:
  it reconnects every `reconnect_interval` and restores channels, exchanges, queues, bindings and
  consumers. Giving up raises `BusUnavailableError`. The socket is corked (corking.py): the
  frames of one loop turn leave in one system call.
- `broker_op` bounds one broker round trip and turns aio-pika's failures into
  `BusUnavailableError`: robust channels wait for a reconnection without limit, which must never
  hang a caller.
- `run_to_end` is `broker_op` for a call that must finish once started (binds: aiormq closes the
  channel of a call cancelled in flight).
- `Publisher.send` returns once the broker confirmed the message (one confirm channel for the
  whole bus), and raises `BusUnavailableError` when it cannot be confirmed within the bound.
  The caller builds the AMQP properties: straight to aiormq's `basic_publish`, without
  aio-pika's `Message` (a dozen properties converted and copied per publish) or its exchange
  object in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import AsyncIterator, Awaitable
from typing import cast

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq import spec
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from ..base import BusUnavailableError
from .corking import CorkedRobustConnection

log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def broker_op(what: str, limit: float) -> AsyncIterator[None]:
    """Bound a broker round trip and raise the bus's own error for aio-pika's failures."""
    try:
        async with asyncio.timeout(limit):
            yield
    except TimeoutError as exc:  # before CONNECTION_EXCEPTIONS: TimeoutError is an OSError
        raise BusUnavailableError(f"{what}: no answer from the broker in {limit:g}s") from exc
    except CONNECTION_EXCEPTIONS as exc:
        raise BusUnavailableError(f"{what}: {exc!r}") from exc


async def run_to_end(what: str, limit: float, op: Awaitable[object]) -> None:
    """`broker_op` for a call that must not be cancelled halfway: aiormq closes the whole channel
    when a call in flight is cancelled (a timed-out bind would take every delivery of the
    subscription with it). The caller still gets `BusUnavailableError` at the bound, or its own
    cancellation; the call itself runs to its end, and a failure after that is logged."""
    task = asyncio.ensure_future(op)
    task.add_done_callback(functools.partial(_late_failure, what))
    async with broker_op(what, limit):
        await asyncio.shield(task)


def _late_failure(what: str, task: asyncio.Future[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("broker call failed", op=what, error=repr(task.exception()))


async def close_channel(channel: AbstractRobustChannel, limit: float) -> None:
    """Close a channel we own; a close the broker does not confirm goes with the connection."""
    try:
        async with broker_op("close channel", limit):
            await channel.close()
    except BusUnavailableError:
        log.warning("channel close not confirmed; it goes with the connection")


async def open_connection(
    url: str, *, name: str, describe: str, connect_timeout: float, reconnect_interval: float
) -> AbstractRobustConnection:
    """A robust connection named `name` (the management UI shows it), retried until it opens."""
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(connect_timeout),
            wait=wait_exponential(multiplier=0.2, max=3),
            retry=retry_if_exception_type(CONNECTION_EXCEPTIONS),
            before_sleep=lambda state: log.warning(
                "broker not reachable; retrying", bus=describe, attempt=state.attempt_number
            ),
            reraise=True,
        ):
            with attempt:
                return await aio_pika.connect_robust(
                    url,
                    connection_class=CorkedRobustConnection,
                    client_properties={"connection_name": name},
                    reconnect_interval=reconnect_interval,
                    timeout=min(10.0, connect_timeout),
                )
    except CONNECTION_EXCEPTIONS as exc:
        raise BusUnavailableError(f"{describe}: no broker within {connect_timeout:g}s") from exc
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover


class Publisher:
    """The bus's one confirm channel and its topic exchange (declared durable)."""

    def __init__(
        self, channel: AbstractRobustChannel, exchange: AbstractRobustExchange, op_timeout: float
    ) -> None:
        self.channel = channel
        self.exchange = exchange
        self._op_timeout = op_timeout
        # aiormq gives a message without an id a random UUID (a getrandbits and a UUID object per
        # publish); a counter is as unique within the channel, which is all it keys by
        self._ids = map("{:x}".format, itertools.count(1))

    @classmethod
    async def open(
        cls, connection: AbstractRobustConnection, exchange_name: str, op_timeout: float
    ) -> Publisher:
        async with broker_op("declare exchange", op_timeout):
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(
                exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        return cls(channel, exchange, op_timeout)

    async def send(
        self,
        routing_key: str,
        body: bytes,
        properties: spec.Basic.Properties,
        exchange: str | None = None,
    ) -> None:
        """Publish to the topic exchange (or `exchange`; "" is the default exchange) and wait
        for the confirm, through aiormq directly.

        `properties` is sent as given (the caller builds only what it sets); it gets a message
        id if it has none. Not mandatory: a key nobody listens to is fine. A closed channel, a
        nack or no confirm within the bound raise `BusUnavailableError`.

        The publish does not wait for its frames to be written before the channel takes the
        next one (aiormq's `wait=False`): publishes of one loop turn then leave in one write of
        the corked socket (corking.py) instead of one write and one channel-lock turn each.
        Their order on the channel is the order of the calls; the confirm is still awaited."""
        if not properties.message_id:
            properties.message_id = next(self._ids)
        # `broker_op` inlined: no generator context manager and no description string built for
        # every publish of the hot path, only for the one that fails
        try:
            async with asyncio.timeout(self._op_timeout):
                await self.channel.ready()  # robust: waits for a reconnection, within the bound
                underlay = cast(aiormq.Channel, await self.channel.get_underlay_channel())
                await underlay.basic_publish(
                    body,
                    exchange=self.exchange.name if exchange is None else exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=False,
                    wait=False,
                )
        except TimeoutError as exc:  # before CONNECTION_EXCEPTIONS: TimeoutError is an OSError
            raise BusUnavailableError(
                f"publish {routing_key!r}: no answer from the broker in {self._op_timeout:g}s"
            ) from exc
        except CONNECTION_EXCEPTIONS as exc:
            raise BusUnavailableError(f"publish {routing_key!r}: {exc!r}") from exc
