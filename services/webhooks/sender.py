"""The webhook sender: delivers the queued events to `ROOMCAST_WEBHOOK_URL`, at least once.

It consumes the durable work queue (`events.queue_name`), shared by every sender replica, with
`ROOMCAST_WEBHOOK_CONCURRENCY` POSTs in flight. A message is acknowledged only after the
receiver answered 2xx, so a sender that dies mid-way leaves it to the next one: the receiver
may see a POST twice, never zero times. Any other answer, a redirect, a timeout or a refused
connection is retried with exponential backoff and jitter (tenacity), from
`ROOMCAST_WEBHOOK_RETRY_FIRST` up to `ROOMCAST_WEBHOOK_RETRY_MAX` seconds between tries, each
try signed anew (`signing`). A delivery still failing after `HOLD_SECONDS` goes back to the
queue as a new message (published, confirmed, then acknowledged), so no broker limit on how
long or how often a message is delivered ever drops it. Events older than
`ROOMCAST_WEBHOOK_GIVE_UP_SECONDS` are dropped after a failed try (counted, logged as an
error). POSTs are not ordered among themselves: an event's `time` orders them.

It runs as its own process (`roomcast webhooks`) rather than inside history: a slow or dead
receiver then holds only the sender's queue and connections, never history's single active
consumer, and senders scale by replicas of their own. `roomcast dev` runs it in its process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx
import structlog
from prometheus_client import Counter, Histogram
from pydantic import SecretStr, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from roomcast.shared.bus import Bus, Consumer, Message, RejectMessage
from roomcast.shared.config import ENV_PREFIX, ConfigError, Settings

from . import signing
from .events import PATTERNS, ROUTING_KEY, WebhookPayload, queue_name

log = structlog.get_logger(__name__)

POSTS = Counter("roomcast_webhook_posts_total", "Webhook POST tries, by outcome", ["outcome"])
RETRIES = Counter("roomcast_webhook_retries_total", "Webhook POSTs tried again after a failure")
DROPPED = Counter(
    "roomcast_webhook_dropped_total",
    "Webhook POSTs given up (gave_up: too old; malformed: not a webhook body)",
    ["reason"],
)
REQUEUED = Counter(
    "roomcast_webhook_requeued_total",
    "Webhook POSTs tried for the hold time and handed back to the queue as new messages",
)
POST_SECONDS = Histogram("roomcast_webhook_post_seconds", "Time to the receiver's answer")


HOLD_SECONDS = 600.0  # well inside RabbitMQ's default consumer_timeout (30 minutes)


class DeliveryError(Exception):
    """One try failed: the receiver answered something else than 2xx, or did not answer."""


class SenderStoppingError(Exception):
    """The sender stops: the message goes back to the queue for the next sender."""


def _user_agent() -> str:
    try:
        return f"roomcast-webhooks/{version('roomcast')}"
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "roomcast-webhooks"


def webhook_target(settings: Settings) -> tuple[str, SecretStr]:
    """The URL and signing secret, or a one-line `ConfigError` naming what is missing."""
    if settings.webhook_url is None:
        raise ConfigError(f"{ENV_PREFIX}WEBHOOK_URL: is required to send webhooks")
    if settings.webhook_secret is None:
        raise ConfigError(
            f"{ENV_PREFIX}WEBHOOK_SECRET: is required with {ENV_PREFIX}WEBHOOK_URL (at least "
            "16 characters): receivers check every POST's signature with it"
        )
    return str(settings.webhook_url), settings.webhook_secret


class WebhookSender:
    def __init__(
        self,
        bus: Bus,
        settings: Settings,
        *,
        hold: float | None = HOLD_SECONDS,
        persistent: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`hold`: how long one delivery is tried before it goes back to the queue as a fresh
        message (a confirmed publish, then the ack; `persistent` as for `WebhookEmitter`).
        RabbitMQ closes a channel that keeps a delivery unacknowledged past its
        consumer_timeout (30 minutes by default), and RabbitMQ 4 drops a quorum-queue message
        delivered 20 times: a long outage of the receiver must cost neither. None: tried in
        place for ever (the in-memory bus has no such limits). `transport`: for tests."""
        self._url, self._secret = webhook_target(settings)
        self._bus = bus
        self._settings = settings
        self._transport = transport
        self._hold = hold
        self._persistent = persistent
        self._client: httpx.AsyncClient | None = None
        self._consumer: Consumer | None = None
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task[Any]] = set()
        first, longest = settings.webhook_retry_first, settings.webhook_retry_max
        # first, 2 x first, 4 x first ... up to the longest, plus up to `first` of jitter
        self._wait = wait_exponential(multiplier=first, max=longest) + wait_random(0, first)

    async def start(self) -> None:
        self._stopping.clear()
        self._client = httpx.AsyncClient(
            timeout=self._settings.webhook_timeout,
            follow_redirects=False,
            transport=self._transport,
            headers={"User-Agent": _user_agent(), "Content-Type": "application/json"},
        )
        self._consumer = await self._bus.consume(
            queue_name(self._settings.exchange),
            PATTERNS,
            self._handle,
            prefetch=self._settings.webhook_concurrency,
        )
        log.info("webhook sender started", concurrency=self._settings.webhook_concurrency)

    async def stop(self) -> None:
        """Stop taking messages; POSTs in flight finish (within the POST timeout), tries in
        their pause go back to the queue."""
        self._stopping.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.close()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=self._settings.webhook_timeout + 1)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def ready(self) -> bool:
        return self._consumer is not None and self._bus.is_ready

    async def _handle(self, message: Message) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            await self._deliver(message)
        finally:
            self._in_flight.discard(task)

    async def _deliver(self, message: Message) -> None:
        try:
            payload = WebhookPayload.model_validate_json(message.body)
        except ValidationError as exc:
            DROPPED.labels("malformed").inc()
            raise RejectMessage(f"not a webhook body: {exc.error_count()} errors") from exc
        give_up = self._settings.webhook_give_up_seconds
        deadline = payload.oldest / 1000 + give_up if give_up else None
        held_until = time.monotonic() + self._hold if self._hold is not None else None

        def stop(state: RetryCallState) -> bool:
            too_old = deadline is not None and time.time() >= deadline
            return too_old or (held_until is not None and time.monotonic() >= held_until)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DeliveryError),
            wait=self._wait,
            stop=stop,
            sleep=self._pause,
            before_sleep=self._retrying,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._post(message.body)
        except DeliveryError as exc:
            if deadline is None or time.time() < deadline:
                await self._requeue(message.body, payload, exc)
                return
            DROPPED.labels("gave_up").inc()
            log.error(
                "webhook given up",
                events=len(payload.events),
                age_s=round(time.time() - payload.oldest / 1000),
                error=str(exc),
            )

    async def _requeue(self, body: bytes, payload: WebhookPayload, error: Exception) -> None:
        """Hand a POST that was tried for `hold` back to the queue, as a new message."""
        await self._bus.publish(ROUTING_KEY, body, persistent=self._persistent)
        REQUEUED.inc()
        log.warning(
            "webhook still failing; back to the queue",
            events=len(payload.events),
            held_s=self._hold,
            error=str(error),
        )

    async def _post(self, body: bytes) -> None:
        if self._stopping.is_set() or self._client is None:
            raise SenderStoppingError("the webhook sender is stopping")
        headers = {signing.HEADER: signing.sign(self._secret.get_secret_value(), body)}
        started = time.perf_counter()
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            POSTS.labels("failed").inc()
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
        POST_SECONDS.observe(time.perf_counter() - started)
        if not response.is_success:
            POSTS.labels("failed").inc()
            raise DeliveryError(f"the receiver answered {response.status_code}")
        POSTS.labels("delivered").inc()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        if self._stopping.is_set():
            raise SenderStoppingError("the webhook sender is stopping")

    async def _retrying(self, state: RetryCallState) -> None:
        RETRIES.inc()
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        log.warning(
            "webhook POST failed; retrying",
            attempt=state.attempt_number,
            retry_in=round(state.upcoming_sleep, 3),
            error=str(error),
        )
