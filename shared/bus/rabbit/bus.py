"""`RabbitBus`: the `Bus` on RabbitMQ, put together from the role modules of this package.

It holds the connection and the confirm channel (`connection`), and hands out subscriptions
(`subscriptions`), work consumers (`consumers`) and request/reply (`rpc`); the guarantees of each
are in its module, the contract they add up to in `..base`. Every failure surfaces as
`BusUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from aio_pika.abc import AbstractRobustConnection
from aiormq import spec
from yarl import URL

from .. import trace
from ..base import BusUnavailableError, GapHandler, Handler, LossHandler, Message
from ..inbox import DEFAULT_INBOX_LIMIT
from .connection import Publisher, open_connection
from .consumers import RabbitConsumer, open_consumer
from .rpc import Replies
from .subscriptions import RabbitSubscription, open_subscription

_TRANSIENT, _PERSISTENT = 1, 2  # AMQP's delivery modes


class RabbitBus:
    """A `Bus` on RabbitMQ (see the package docstring for the topology)."""

    def __init__(
        self,
        url: str,
        *,
        exchange: str = "roomcast",
        name: str = "roomcast",
        confirm_timeout: float = 10.0,
        connect_timeout: float = 30.0,
        reconnect_interval: float = 1.0,
        inbox_limit: int = DEFAULT_INBOX_LIMIT,
    ) -> None:
        self.name = name
        self.exchange_name = exchange
        self.op_timeout = confirm_timeout
        self.inbox_limit = inbox_limit
        self._url = url
        self._connect_timeout = connect_timeout
        self._reconnect_interval = reconnect_interval
        self._connection: AbstractRobustConnection | None = None
        self._publisher: Publisher | None = None
        self._replies = Replies(confirm_timeout)
        self.subscriptions: set[RabbitSubscription] = set()
        self.consumers: set[RabbitConsumer] = set()

    def __repr__(self) -> str:
        url = URL(self._url)
        return f"<RabbitBus {self.name} {url.with_password('***') if url.password else url}>"

    async def connect(self) -> None:
        connection = await open_connection(
            self._url,
            name=self.name,
            describe=repr(self),
            connect_timeout=self._connect_timeout,
            reconnect_interval=self._reconnect_interval,
        )
        self._connection = connection
        try:
            self._publisher = await Publisher.open(connection, self.exchange_name, self.op_timeout)
        except BusUnavailableError:
            await self.close()
            raise

    async def close(self) -> None:
        for sub in list(self.subscriptions):
            await sub.stop()
        for consumer in list(self.consumers):
            consumer.abort()
        self.consumers.clear()
        self._replies.fail_all(BusUnavailableError("bus closed"))
        connection, self._connection = self._connection, None
        self._publisher = None
        if connection is not None:
            await connection.close()

    @property
    def is_ready(self) -> bool:
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    def _open(self) -> tuple[AbstractRobustConnection, Publisher]:
        if self._connection is None or self._publisher is None:
            raise BusUnavailableError(f"{self!r} is not connected")
        return self._connection, self._publisher

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        persistent: bool = False,
    ) -> None:
        _, publisher = self._open()
        table: dict[str, Any] | None = None
        published = None
        if headers:
            # the caller's dict as it is (nothing here changes it), a copy where it is stamped
            table = cast(dict[str, Any], headers) if type(headers) is dict else dict(headers)
            if trace.ENABLED:
                table = dict(table)
                published = trace.stamp_published(table)
        # only what is set: no other property is encoded into the frame
        properties = spec.Basic.Properties(
            headers=table, delivery_mode=_PERSISTENT if persistent else _TRANSIENT
        )
        await publisher.send(routing_key, body, properties)
        if published is not None:
            trace.confirmed(published)

    async def subscribe(
        self,
        handler: Handler,
        *,
        name: str = "",
        on_gap: GapHandler | None = None,
        on_loss: LossHandler | None = None,
    ) -> RabbitSubscription:
        connection, _ = self._open()
        sub = await open_subscription(
            connection,
            handler,
            bus_name=self.name,
            name=name,
            exchange=self.exchange_name,
            op_timeout=self.op_timeout,
            inbox_limit=self.inbox_limit,
            on_gap=on_gap,
            on_loss=on_loss,
            forget=self.subscriptions.discard,
        )
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
    ) -> RabbitConsumer:
        connection, _ = self._open()
        consumer = await open_consumer(
            connection,
            queue,
            patterns,
            handler,
            exchange=self.exchange_name,
            prefetch=prefetch,
            single_active=single_active,
            op_timeout=self.op_timeout,
            forget=self.consumers.discard,
        )
        self.consumers.add(consumer)
        return consumer

    async def request(
        self,
        routing_key: str,
        body: bytes,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        _, publisher = self._open()
        return await self._replies.request(
            publisher, routing_key, body, timeout=timeout, headers=headers
        )

    async def reply(self, request: Message, body: bytes) -> None:
        if request.reply_to is None:
            return
        _, publisher = self._open()
        await self._replies.reply(publisher, request, body)
