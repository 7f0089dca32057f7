"""`ReadIndex`: history's read states in memory, per room (`RoomReads`), so that a join asks
the database nothing in the steady state.

A room is loaded the first time one of its readers is asked (`MessageStore.read_tail`, one
load shared by every join waiting for it) and then kept exact by the writes history makes
(`IndexedStore` reports them). At most `max_rooms` rooms are held, the least recently asked let
go first.

What it trusts, and when it stops:
- History is the one writer of messages and markers (its single active consumer). The index
  is cleared (`reset`) when that may have stopped being true for a while: the broker connection
  was lost (another replica may have taken over and written), or a write failed (what the
  store holds is unknown). A request delivered before a reset may still be running after it;
  it is answered by the store, and loads nothing.
- A load is installed only if no write to its room was in flight at any moment of it (the
  snapshot might or might not hold that write); otherwise its waiters ask the store, and the
  next read loads again.
- A repeat of a message the index does not hold (an old one sent again, or one that another
  writer stored) lets its room go.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog
from prometheus_client import Counter, Gauge

from roomcast.shared.errors import ProtocolError
from roomcast.shared.store.base import UNREAD_CAP, Inserted, MessageStore, ReadState

from .roomreads import RoomReads

log = structlog.get_logger(__name__)

ROOMS = Gauge("roomcast_history_read_index_rooms", "Rooms whose read states history holds")
LOADS = Counter("roomcast_history_read_index_loads_total", "Rooms loaded into the read index")
EVICTIONS = Counter(
    "roomcast_history_read_index_evictions_total", "Rooms let go from the read index (LRU)"
)
ANSWERS = Counter(
    "roomcast_history_read_states_total", "Read states answered, by where from", ["source"]
)  # source: "memory" or "store"
RESETS = Counter(
    "roomcast_history_read_index_resets_total", "Read index cleared or a room let go", ["reason"]
)

MAX_ROOMS = 1024
# Messages held per room: a reader without a marker in a larger room is answered from memory
# when these hold UNREAD_CAP messages by others, as they mostly do.
TAIL = UNREAD_CAP + UNREAD_CAP // 2

_generations = itertools.count(1)
# The index generation current when the request now running was delivered.
_delivered: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "read_index_delivered", default=None
)


@dataclass(eq=False)
class _Load:
    generation: int
    dirty: bool = False
    task: asyncio.Task[RoomReads | None] | None = field(default=None, repr=False)


class ReadIndex:
    def __init__(self, max_rooms: int = MAX_ROOMS, tail: int = TAIL) -> None:
        self._max_rooms = max_rooms
        self._tail = tail
        self._rooms: OrderedDict[str, RoomReads] = OrderedDict()
        self._loads: dict[str, _Load] = {}
        self._writing: dict[str, int] = {}
        self.generation = next(_generations)

    def __contains__(self, room: str) -> bool:
        return room in self._rooms

    def delivered(self) -> None:
        """Mark the running request (its task and what it starts) as delivered now."""
        _delivered.set(self.generation)

    def _current(self) -> bool:
        seen = _delivered.get()
        return seen is None or seen == self.generation

    def reset(self, reason: str) -> None:
        """Forget every room; loads in flight are not installed."""
        self.generation = next(_generations)
        for load in self._loads.values():
            load.dirty = True
        if self._rooms:
            log.info("read index cleared", reason=reason, rooms=len(self._rooms))
        self._rooms.clear()
        ROOMS.set(0)
        RESETS.labels(reason).inc()

    def _drop(self, room: str, reason: str) -> None:
        if self._rooms.pop(room, None) is not None:
            ROOMS.set(len(self._rooms))
            RESETS.labels(reason).inc()

    # reads ------------------------------------------------------------------------------------
    async def state(
        self, store: MessageStore, room: str, reader: str, username: str | None
    ) -> ReadState:
        """The reader's read state: from memory when the room is (or can be) held and tells it,
        else from the store."""
        reads = self._rooms.get(room)
        if reads is not None:
            self._rooms.move_to_end(room)
        elif self._current():
            reads = await self._load(store, room)
        if reads is not None:
            answer = reads.state(reader, username)
            if answer is not None:
                ANSWERS.labels("memory").inc()
                return answer
        ANSWERS.labels("store").inc()
        return await store.read_state(room, reader, username)

    async def _load(self, store: MessageStore, room: str) -> RoomReads | None:
        load = self._loads.get(room)
        if load is None or load.generation != self.generation:
            load = _Load(self.generation, dirty=self._writing.get(room, 0) > 0)
            load.task = asyncio.ensure_future(self._fill(store, room, load))
            self._loads[room] = load
        assert load.task is not None
        # one load for every waiter: a waiter that gives up does not cancel the others'
        return await asyncio.shield(load.task)

    async def _fill(self, store: MessageStore, room: str, load: _Load) -> RoomReads | None:
        try:
            tail = await store.read_tail(room, self._tail)
        finally:
            if self._loads.get(room) is load:
                del self._loads[room]
        if load.dirty or load.generation != self.generation:
            return None
        reads = RoomReads(tail, self._tail)
        LOADS.inc()
        self._rooms[room] = reads
        while len(self._rooms) > self._max_rooms:
            self._rooms.popitem(last=False)
            EVICTIONS.inc()
        ROOMS.set(len(self._rooms))
        return reads

    # writes -----------------------------------------------------------------------------------
    @contextmanager
    def writing(self, rooms: Iterable[str]) -> Iterator[None]:
        """Around a write to the store: loads of these rooms meanwhile are not installed, and a
        write that fails clears the index (what the store holds is unknown)."""
        touched = list(dict.fromkeys(rooms))
        for room in touched:
            self._writing[room] = self._writing.get(room, 0) + 1
            load = self._loads.get(room)
            if load is not None:
                load.dirty = True
        try:
            yield
        except ProtocolError:
            raise  # refused: nothing was written
        except BaseException:
            self.reset("store_error")
            raise
        finally:
            for room in touched:
                left = self._writing[room] - 1
                if left:
                    self._writing[room] = left
                else:
                    del self._writing[room]

    def stored(self, inserted: Inserted) -> None:
        """Messages the store has just taken (and the repeats it skipped)."""
        for message, fresh in zip(inserted.messages, inserted.fresh, strict=True):
            reads = self._rooms.get(message.room)
            if reads is None:
                continue
            if fresh:
                reads.add(message.id, message.username, bool(message.deleted))
            elif not reads.holds(message.id):
                # an old message sent again, or one another writer stored: ask the store anew
                self._drop(message.room, "unknown_repeat")

    def deleted(self, room: str, message_id: str) -> None:
        reads = self._rooms.get(room)
        if reads is not None:
            reads.deleted(message_id)

    def marked(self, room: str, reader: str, marker_id: str) -> None:
        reads = self._rooms.get(room)
        if reads is not None:
            reads.marked(reader, marker_id)
