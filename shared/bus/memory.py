"""`InMemoryBus`: the bus for one process, with RabbitMQ's semantics and no broker.

It only works in memory: every service using it must live in the same process (`roomcast dev`,
unit tests). Topic matching, per-queue FIFO, work-queue acknowledgement and requeue,
single-active consumers, request expiry and reply timeouts behave as on RabbitMQ (the contract
tests hold both to the same rules). Having no disk, a persistent publish is confirmed once every
work queue it reached has processed it. Subscription inboxes are bounded as on RabbitMQ (`inbox`).

Nothing here ever loses the connection, so `outage()` simulates it for tests: inside, the bus is
unavailable; on exit every subscription's `on_gap` fires, as after a RabbitMQ reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import structlog

from .base import (
    BusTimeoutError,
    BusUnavailableError,
    GapHandler,
    Handler,
    LossHandler,
    Message,
    RejectMessage,
    topic_matches,
)
from .inbox import DEFAULT_INBOX_LIMIT, Inbox

log = structlog.get_logger(__name__)

_REQUEUE_DELAY = 0.05


@dataclass(slots=True)
class _Envelope:
    message: Message
    expires_at: float | None
    settled: asyncio.Future[None] | None


@dataclass(eq=False)
class _Subscription:
    bus: InMemoryBus
    inbox: Inbox
    patterns: set[str] = field(default_factory=set)

    async def bind(self, pattern: str) -> None:
        self.bus._check_open()
        self.patterns.add(pattern)

    async def unbind(self, pattern: str) -> None:
        self.bus._check_open()
        self.patterns.discard(pattern)

    async def close(self) -> None:
        self.bus._subscriptions.discard(self)
        await self.inbox.close()

    def matches(self, key: str) -> bool:
        return any(topic_matches(p, key) for p in self.patterns)


@dataclass(eq=False)
class _Consumer:
    queue: _WorkQueue
    handler: Handler
    prefetch: int
    in_flight: int = 0

    async def close(self) -> None:
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)
        self.queue.wake.set()


@dataclass(eq=False)
class _WorkQueue:
    name: str
    patterns: set[str]
    single_active: bool
    pending: deque[_Envelope] = field(default_factory=deque)
    consumers: list[_Consumer] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def matches(self, key: str) -> bool:
        return any(topic_matches(p, key) for p in self.patterns)

    def put(self, envelope: _Envelope, *, front: bool = False) -> None:
        if front:
            self.pending.appendleft(envelope)
        else:
            self.pending.append(envelope)
        self.wake.set()

    def _pick(self) -> _Consumer | None:
        candidates = self.consumers[:1] if self.single_active else self.consumers
        free = [c for c in candidates if c.in_flight < c.prefetch]
        if not free:
            return None
        return free[next(self._turn) % len(free)]

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                consumer = self._pick()
                if consumer is None:
                    break
                envelope = self.pending.popleft()
                if envelope.expires_at is not None and envelope.expires_at < time.monotonic():
                    _settle(envelope)
                    continue
                consumer.in_flight += 1
                task = asyncio.create_task(self._deliver(consumer, envelope))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _deliver(self, consumer: _Consumer, envelope: _Envelope) -> None:
        try:
            await consumer.handler(envelope.message)
        except asyncio.CancelledError:
            self.put(envelope, front=True)
            raise
        except RejectMessage:
            log.warning("message rejected", queue=self.name, key=envelope.message.routing_key)
            _settle(envelope)
        except Exception:
            log.exception("work handler failed; requeued", queue=self.name)
            await asyncio.sleep(_REQUEUE_DELAY)
            self.put(envelope, front=True)
        else:
            _settle(envelope)
        finally:
            consumer.in_flight -= 1
            self.wake.set()


def _settle(envelope: _Envelope) -> None:
    if envelope.settled is not None and not envelope.settled.done():
        envelope.settled.set_result(None)


class InMemoryBus:
    """A `Bus` for services that share one process and event loop."""

    def __init__(self, name: str = "memory", *, inbox_limit: int = DEFAULT_INBOX_LIMIT) -> None:
        self.name = name
        self.inbox_limit = inbox_limit
        self._subscriptions: set[_Subscription] = set()
        self._queues: dict[str, _WorkQueue] = {}
        self._replies: dict[str, asyncio.Future[bytes]] = {}
        self._open = False
        self._outage = False

    async def connect(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        for sub in list(self._subscriptions):
            await sub.close()
        for queue in self._queues.values():
            tasks = [t for t in (queue.task, *queue.tasks) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._queues.clear()
        for future in self._replies.values():
            if not future.done():
                future.set_exception(BusUnavailableError("bus closed"))

    @property
    def is_ready(self) -> bool:
        return self._open and not self._outage

    def _check_open(self) -> None:
        if not self._open:
            raise BusUnavailableError("the in-memory bus is not connected")
        if self._outage:
            raise BusUnavailableError("the in-memory bus is in an outage (test hook)")

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        """Test hook: the broker is away while inside, then back, as RabbitMQ across a restart.

        Inside, `is_ready` is False, and every operation (publish, request, reply, subscribe,
        bind, unbind, consume) raises `BusUnavailableError`, so no broadcast is delivered.
        Work queues keep what they hold. On entry every subscription marks the loss
        (`on_loss`); on exit, every subscription's `on_gap` is called."""
        if self._outage:
            raise RuntimeError("already in an outage")
        self._outage = True
        for sub in list(self._subscriptions):
            sub.inbox.lost()
        try:
            yield
        finally:
            self._outage = False
            for sub in list(self._subscriptions):
                sub.inbox.gap("reconnect")

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        persistent: bool = False,
    ) -> None:
        self._check_open()
        message = Message(routing_key, body, dict(headers or {}))
        settled = self._route(message, expires_at=None, track=persistent)
        if settled:
            await asyncio.gather(*settled)

    def _route(
        self, message: Message, *, expires_at: float | None, track: bool
    ) -> list[asyncio.Future[None]]:
        for sub in self._subscriptions:
            if sub.matches(message.routing_key):
                sub.inbox.put(message)
        settled: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for queue in self._queues.values():
            if queue.matches(message.routing_key):
                future: asyncio.Future[None] | None = loop.create_future() if track else None
                if future is not None:
                    settled.append(future)
                queue.put(_Envelope(message, expires_at, future))
        return settled

    async def subscribe(
        self,
        handler: Handler,
        *,
        name: str = "",
        on_gap: GapHandler | None = None,
        on_loss: LossHandler | None = None,
    ) -> _Subscription:
        self._check_open()
        inbox = Inbox(
            handler,
            name=f"{name or 'sub'}-{uuid.uuid4().hex[:8]}",
            label=name,
            limit=self.inbox_limit,
            on_gap=on_gap,
            on_loss=on_loss,
        )
        inbox.start()
        sub = _Subscription(self, inbox)
        self._subscriptions.add(sub)
        return sub

    async def consume(
        self,
        queue: str,
        patterns: list[str],
        handler: Handler,
        *,
        prefetch: int = 64,
        single_active: bool = False,
    ) -> _Consumer:
        self._check_open()
        work = self._queues.get(queue)
        if work is None:
            work = _WorkQueue(queue, set(patterns), single_active)
            work.task = asyncio.create_task(work.run(), name=f"bus-queue-{queue}")
            self._queues[queue] = work
        else:
            work.patterns.update(patterns)
        consumer = _Consumer(work, handler, max(1, prefetch))
        work.consumers.append(consumer)
        work.wake.set()
        return consumer

    async def request(
        self,
        routing_key: str,
        body: bytes,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        self._check_open()
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._replies[correlation_id] = future
        message = Message(
            routing_key,
            body,
            dict(headers or {}),
            reply_to="memory.reply",
            correlation_id=correlation_id,
        )
        try:
            self._route(message, expires_at=time.monotonic() + timeout, track=False)
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError as exc:
            raise BusTimeoutError(f"no reply to {routing_key!r} within {timeout:g}s") from exc
        finally:
            self._replies.pop(correlation_id, None)

    async def reply(self, request: Message, body: bytes) -> None:
        if request.correlation_id is None:
            return
        if self._outage:
            raise BusUnavailableError("the in-memory bus is in an outage (test hook)")
        future = self._replies.get(request.correlation_id)
        if future is not None and not future.done():
            future.set_result(body)
