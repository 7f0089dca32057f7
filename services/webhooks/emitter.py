"""Putting webhook events on the bus, for the senders (`sender`) to deliver.

`WebhookEmitter.emit` publishes one POST body and returns once the broker holds it: history
awaits it before it acknowledges the message it stored, so a `message.posted` is in the durable
queue before its chat message leaves history's (at least once, end to end).

`WebhookOutbox` is for presence, whose announcer must never wait on a broker confirm: events
queue in memory, in order, and a supervised task publishes them, retrying with backoff while the
broker is away. A broker outage delays presence's events instead of losing them, up to `limit`
events; beyond, the oldest are dropped (counted, logged). What is still in the outbox when
presence stops is lost: the guarantee starts at the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence

import structlog
from prometheus_client import Counter, Gauge

from roomcast.shared.bus import Bus, BusUnavailableError
from roomcast.shared.config import Settings

from .events import ROUTING_KEY, WebhookEvent, WebhookPayload

log = structlog.get_logger(__name__)

EMITTED = Counter(
    "roomcast_webhook_events_emitted_total", "Webhook events put on the bus", ["type"]
)
OUTBOX_DROPPED = Counter(
    "roomcast_webhook_outbox_dropped_total",
    "Presence webhook events dropped because the outbox was full (the broker was away too long)",
)
OUTBOX_PENDING = Gauge("roomcast_webhook_outbox_events", "Webhook events waiting for the broker")


class WebhookEmitter:
    """Publishes webhook POST bodies to the senders' work queue.

    `persistent`: True on RabbitMQ (the events survive a broker restart). On the in-memory bus
    a persistent publish returns only once the queue's consumer has handled it (shared/bus), which
    here would mean once the receiver answered: there it is False, and the queue holds the
    events in memory, which is all one process can do."""

    def __init__(self, bus: Bus, *, persistent: bool) -> None:
        self._bus = bus
        self._persistent = persistent

    async def emit(self, events: Sequence[WebhookEvent]) -> None:
        """Publish the events as one POST body; raises `BusUnavailableError` when unconfirmed."""
        if not events:
            return
        body = WebhookPayload(events=list(events)).encode()
        await self._bus.publish(ROUTING_KEY, body, persistent=self._persistent)
        for event in events:
            EMITTED.labels(event.type).inc()


def emitter_for(bus: Bus, settings: Settings, *, persistent: bool) -> WebhookEmitter | None:
    """An emitter when webhooks are configured (`ROOMCAST_WEBHOOK_URL`), else None."""
    return WebhookEmitter(bus, persistent=persistent) if settings.webhook_url else None


class WebhookOutbox:
    """Events waiting for the bus, published in order by `run` (supervised by its owner)."""

    def __init__(
        self,
        emitter: WebhookEmitter,
        *,
        limit: int = 100_000,
        retry_first: float = 0.1,
        retry_max: float = 5.0,
    ) -> None:
        self._emitter = emitter
        self._limit = limit
        self._first = retry_first
        self._max = retry_max
        self._batches: deque[list[WebhookEvent]] = deque()
        self._count = 0
        self._wake = asyncio.Event()
        self.on_round: Callable[[], None] = lambda: None  # a batch went out (supervision)

    def put(self, events: Sequence[WebhookEvent]) -> None:
        if not events:
            return
        self._batches.append(list(events))
        self._count += len(events)
        while self._count > self._limit and len(self._batches) > 1:
            dropped = self._batches.popleft()
            self._count -= len(dropped)
            OUTBOX_DROPPED.inc(len(dropped))
            log.error("webhook outbox full; oldest events dropped", events=len(dropped))
        OUTBOX_PENDING.set(self._count)
        self._wake.set()

    @property
    def pending(self) -> int:
        return self._count

    async def run(self) -> None:
        delay = self._first
        while True:
            if not self._batches:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._batches[0]
            try:
                await self._emitter.emit(batch)
            except BusUnavailableError as exc:
                log.warning(
                    "webhook events not published yet; retrying",
                    events=self._count,
                    retry_in=round(delay, 3),
                    error=str(exc),
                )
                await asyncio.sleep(delay)
                delay = min(self._max, delay * 2)
                continue
            delay = self._first
            with contextlib.suppress(ValueError):  # `put` may have dropped it meanwhile
                self._batches.remove(batch)
                self._count -= len(batch)
            OUTBOX_PENDING.set(self._count)
            self.on_round()
