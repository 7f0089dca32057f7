"""The history service: stores every chat message and answers reads of a room's history.

Writes and reads share one single-active-consumer queue. A read is answered only after every
message ahead of it in the queue is stored, which is what gives a joiner history-then-live with
no gap: its gateway binds to the room first, then asks; whatever was published before the ask is
in the answer, whatever after it arrives live. Messages are acknowledged to the broker only
after the write, and written in `insert_many` batches when a backlog builds.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import structlog
from prometheus_client import Counter, Histogram

from roomcast.shared import rpc, topics
from roomcast.shared.bus import Bus, Consumer, Message, RejectMessage
from roomcast.shared.config import Settings
from roomcast.shared.models import ChatMessage
from roomcast.shared.store.base import MessageStore, StoreUnavailableError

log = structlog.get_logger(__name__)

STORED = Counter("roomcast_history_messages_stored_total", "Chat messages written")
BATCH = Histogram(
    "roomcast_history_batch_size",
    "Messages per insert_many",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250),
)
READS = Counter("roomcast_history_reads_total", "History reads answered", ["op"])

_RETRY_DELAY = 0.5


class WriteBatcher:
    """Collects messages while a write is in flight and writes them together, in order."""

    def __init__(self, store: MessageStore, max_batch: int = 250) -> None:
        self._store = store
        self._max = max_batch
        self._pending: list[tuple[ChatMessage, asyncio.Future[ChatMessage]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._unsettled: set[asyncio.Future[ChatMessage]] = set()

    def add(self, message: ChatMessage) -> asyncio.Future[ChatMessage]:
        future: asyncio.Future[ChatMessage] = asyncio.get_running_loop().create_future()
        self._pending.append((message, future))
        self._unsettled.add(future)
        future.add_done_callback(self._unsettled.discard)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="history-writer")
        return future

    async def drain(self) -> None:
        """Wait until everything added so far is written (or failed); later adds don't count."""
        if self._unsettled:
            await asyncio.wait(set(self._unsettled))

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            try:
                stored = await self._store.insert_many([m for m, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            BATCH.observe(len(batch))
            STORED.inc(len(batch))
            for (_, future), message in zip(batch, stored, strict=True):
                if not future.done():
                    future.set_result(message)


class HistoryService:
    def __init__(self, bus: Bus, store: MessageStore, settings: Settings) -> None:
        self._bus = bus
        self._store = store
        self._settings = settings
        self._batcher = WriteBatcher(store)
        self._consumer: Consumer | None = None

    async def start(self) -> None:
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

    async def _handle(self, message: Message) -> None:
        route = topics.parse(message.routing_key)
        if route.kind == "history":
            await self._read(route.name, message)
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
        try:
            await self._batcher.add(chat)
        except StoreUnavailableError:
            log.warning("store unavailable; message requeued", room=chat.room, id=chat.id)
            await asyncio.sleep(_RETRY_DELAY)
            raise

    async def _read(self, room: str, message: Message) -> None:
        query = rpc.decode(rpc.HistoryQuery, message)
        await self._batcher.drain()
        try:
            reply = await self._answer(room, query)
        except StoreUnavailableError:
            log.warning("store unavailable; history read refused", room=room)
            await self._bus.reply(message, rpc.refusal("unavailable", "history is unavailable"))
            return
        READS.labels(query.op).inc()
        await self._bus.reply(message, rpc.result(reply))

    async def _answer(self, room: str, query: rpc.HistoryQuery) -> rpc.HistoryReply:
        limit = max(1, query.limit)
        if query.op == "since" and query.since is not None:
            after = await self._store.after(room, query.since, limit + 1)
            if after is not None and len(after) <= limit:
                return rpc.HistoryReply(messages=after, recovered=True)
            newest = limit if after is not None else self._settings.history_default
            return rpc.HistoryReply(
                messages=await self._store.newest(room, newest), recovered=False
            )
        if query.op == "lookup":
            found = await self._store.get(room, query.id) if query.id is not None else None
            return rpc.HistoryReply(messages=[found] if found is not None else [])
        if query.op == "before":
            before = await self._store.before(room, query.before, limit)
            if before is None:
                return rpc.HistoryReply(messages=[], known=False)
            return rpc.HistoryReply(messages=before)
        return rpc.HistoryReply(messages=await self._store.newest(room, limit))
