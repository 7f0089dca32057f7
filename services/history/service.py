"""The history service: stores every chat message, answers reads of a room's history and
applies changes to stored messages (edits, deletes, reactions, read markers: PROTOCOL.md 2.3).

Writes, reads and changes share one single-active-consumer queue. A read or a change is handled
only after every message ahead of it in the queue is stored, which is what gives a joiner
history-then-live with no gap: its gateway binds to the room first, then asks; whatever was
published before the ask is in the answer, whatever after it arrives live. A change likewise
finds every message published before it. Messages are acknowledged to the broker only after the
write, and written in `insert_many` batches: a write waits a moment for more messages (no client
waits for it) unless a read or a change is waiting, which writes them at once. The one active
consumer is also the stores' one writer, which their revs rely on.

Reads are answered in `reads`, changes in `changes`; a store that does not answer refuses them
`unavailable` and requeues writes.

Read states (`lastRead`/`unread`) come from memory (`ReadIndex`, behind `IndexedStore`), and
so do the store's seq and rev counters between reservations; both rely on this replica being
the one writer: when its broker connection is lost, another replica may take over and write, so
they are forgotten then (a private subscription of no bindings reports the loss), and again
when the connection is back.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import structlog
from prometheus_client import Counter, Histogram

from roomcast.shared import rpc, topics
from roomcast.shared.bus import Bus, Consumer, Message, RejectMessage, Subscription
from roomcast.shared.config import Settings
from roomcast.shared.errors import ProtocolError
from roomcast.shared.models import ChatMessage
from roomcast.shared.store.base import MessageStore, StoreUnavailableError
from roomcast.shared.topics import Header
from roomcast.webhooks.emitter import WebhookEmitter
from roomcast.webhooks.events import message_posted

from . import changes, reads
from .indexedstore import IndexedStore
from .readindex import ReadIndex

log = structlog.get_logger(__name__)

STORED = Counter("roomcast_history_messages_stored_total", "Chat messages written")
BATCH = Histogram(
    "roomcast_history_batch_size",
    "Messages per insert_many",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250),
)
READS = Counter("roomcast_history_reads_total", "History reads answered", ["op"])
CHANGES = Counter(
    "roomcast_history_changes_total", "Changes handled", ["op", "outcome"]
)  # outcome: "applied" or a refusal's code
EXPIRED = Counter(
    "roomcast_history_requests_expired_total",
    "Reads and changes dropped because their caller had given up (its deadline passed)",
    ["op"],
)

_RETRY_DELAY = 0.5


async def _nothing(message: Message) -> None:
    """The takeover watch is bound to nothing: only its losses matter."""


# How long a write waits for more messages to share it. Nobody waits for a write but the
# broker's ack, a webhook and a read, and a read (or a join's) does not wait: it flushes.
WRITE_LINGER = 0.05


class WriteBatcher:
    """Collects messages for up to `linger` seconds, and while a write is in flight, and writes
    them together, in order: each write costs the database a round trip of its own, whatever
    it holds. `drain` writes what is pending at once."""

    def __init__(
        self, store: MessageStore, max_batch: int = 250, linger: float = WRITE_LINGER
    ) -> None:
        self._store = store
        self._max = max_batch
        self._linger = linger
        self._pending: list[tuple[ChatMessage, str | None, asyncio.Future[ChatMessage]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._unsettled: set[asyncio.Future[ChatMessage]] = set()
        self._added = 0  # messages added so far
        self._taken = 0  # of them, those taken into a write
        self._urgent = 0  # messages added before a drain: written without lingering
        self._wake = asyncio.Event()

    def add(self, message: ChatMessage, author: str | None = None) -> asyncio.Future[ChatMessage]:
        """Queue a message (and its author's identity) for the next write."""
        future: asyncio.Future[ChatMessage] = asyncio.get_running_loop().create_future()
        self._pending.append((message, author, future))
        self._added += 1
        self._unsettled.add(future)
        future.add_done_callback(self._unsettled.discard)
        if len(self._pending) >= self._max:
            self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="history-writer")
        return future

    async def drain(self) -> None:
        """Write everything added so far now, and wait until it is written (or failed); later
        adds don't count."""
        self._urgent = self._added
        self._wake.set()
        if self._unsettled:
            await asyncio.wait(set(self._unsettled))

    async def _gather(self) -> None:
        """Wait up to `linger` for more messages, unless a drain or a full batch says not to."""
        if self._linger <= 0 or self._taken < self._urgent or len(self._pending) >= self._max:
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._linger):
                await self._wake.wait()

    async def _write(self) -> None:
        while self._pending:
            await self._gather()
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            self._taken += len(batch)
            try:
                stored = await self._store.insert_many(
                    [m for m, _, _ in batch], [a for _, a, _ in batch]
                )
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            BATCH.observe(len(batch))
            STORED.inc(len(batch))
            for (_, _, future), message in zip(batch, stored, strict=True):
                if not future.done():
                    future.set_result(message)


class HistoryService:
    def __init__(
        self,
        bus: Bus,
        store: MessageStore,
        settings: Settings,
        *,
        webhooks: WebhookEmitter | None = None,
        write_linger: float = WRITE_LINGER,
    ) -> None:
        """`webhooks`: where `message.posted` goes, when webhooks are on; `write_linger`: how
        long a write waits for more messages (`WriteBatcher`)."""
        self._bus = bus
        self._webhooks = webhooks
        self.index = ReadIndex()
        self._store = IndexedStore(store, self.index)
        self._settings = settings
        self._batcher = WriteBatcher(self._store, linger=write_linger)
        self._consumer: Consumer | None = None
        self._watch: Subscription | None = None

    async def start(self) -> None:
        # before the consumer: no delivery may come before a loss could be reported
        self._watch = await self._bus.subscribe(
            _nothing,
            name="history-takeover",
            on_loss=lambda: self._forget("connection_lost"),
            on_gap=self._reconnected,
        )
        self._consumer = await self._bus.consume(
            topics.history_queue(self._settings.exchange),
            topics.HISTORY_PATTERNS,
            self._handle,
            prefetch=512,
            single_active=True,
        )

    async def stop(self) -> None:
        """Stop taking messages, then finish the writes in flight (their acks follow)."""
        if self._consumer is not None:
            await self._consumer.close()
        with contextlib.suppress(Exception):
            await self._batcher.drain()
        if self._watch is not None:
            with contextlib.suppress(Exception):
                await self._watch.close()

    async def _reconnected(self) -> None:
        self._forget("reconnected")

    def _forget(self, reason: str) -> None:
        """Another replica may have written: what this one holds of the store is read again."""
        self.index.reset(reason)
        self._store.forget_counters()

    async def _handle(self, message: Message) -> None:
        self.index.delivered()
        route = topics.parse(message.routing_key)
        if route.kind == "history":
            await self._request(route.name, message)
        elif route.kind == "room" and route.event == "updateChat":
            await self._write(message)
        else:
            raise RejectMessage(f"history does not handle {message.routing_key!r}")

    async def _write(self, message: Message) -> None:
        try:
            frame = orjson.loads(message.body)
            chat = ChatMessage.model_validate(frame["data"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RejectMessage(f"malformed chat message: {exc}") from exc
        author = message.headers.get(Header.AUTHOR) or None
        try:
            stored = await self._batcher.add(chat, author)
        except StoreUnavailableError:
            log.warning("store unavailable; message requeued", room=chat.room, id=chat.id)
            await asyncio.sleep(_RETRY_DELAY)
            raise
        if self._webhooks is not None:
            # before the ack: a failed publish requeues the message, whose write is idempotent
            await self._webhooks.emit([message_posted(stored)])

    async def _request(self, room: str, message: Message) -> None:
        """A query or a change, answered after the writes ahead of it are stored."""
        request = rpc.decode_history(message)
        await self._batcher.drain()
        if rpc.expired(message):
            # The gateway has answered its client (`history: false` or `unavailable`) already: a
            # read would be wasted on a queue that is late, and a change applied now would
            # contradict what the client was told. Dropping it lets a backlog catch up.
            EXPIRED.labels(request.op).inc()
            log.info("history request dropped: its caller gave up", room=room, op=request.op)
            return
        try:
            if isinstance(request, rpc.HistoryQuery):
                reply = rpc.result(await reads.answer(self._store, self._settings, room, request))
                READS.labels(request.op).inc()
            else:
                reply = rpc.result(await changes.apply(self._store, room, request))
                CHANGES.labels(request.op, "applied").inc()
        except StoreUnavailableError:
            log.warning("store unavailable; history request refused", room=room, op=request.op)
            reply = rpc.refusal("unavailable", "history is unavailable")
        except ProtocolError as exc:
            CHANGES.labels(request.op, exc.code).inc()
            reply = rpc.refusal(exc.code, exc.message)
        await self._bus.reply(message, reply)
