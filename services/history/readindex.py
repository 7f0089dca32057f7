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
- A write that finishes while its room loads is kept and replayed once the load is in: the
  snapshot may or may not hold it, and each replay is idempotent (a fresh message the snapshot
  holds already is not added again: ids are unique in a room; a delete sets a flag; markers
  only move forward). A write that finishes before the load starts is in the snapshot.
- A repeat of a message the index does not hold (an old one sent again, or one that another
  writer stored), or a snapshot that saw a write halfway, lets its room go.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import structlog
from prometheus_client import Counter, Gauge

from roomcast.shared.errors import ProtocolError
from roomcast.shared.models import ChatMessage
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

# A room of TAIL messages holds some 300 KB (ids, seqs, flags; usernames interned), so at
# most about 75 MB, and rooms of fewer messages far less.
MAX_ROOMS = 256
# Messages held per room: a reader without a marker in a larger room is answered from memory
# when these hold UNREAD_CAP messages by others, as they mostly do.
TAIL = UNREAD_CAP + UNREAD_CAP // 2

_generations = itertools.count(1)
# The index generation current when the request now running was delivered.
_delivered: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "read_index_delivered", default=None
)


# A finished write applied to a room's reads: False when they cannot follow it.
Write = Callable[[RoomReads], bool]


@dataclass(eq=False)
class _Load:
    generation: int
    # writes that finished while the snapshot was read, in order, replayed on it
    replay: list[Write] = field(default_factory=list)
    task: asyncio.Task[RoomReads | None] | None = field(default=None, repr=False)


class ReadIndex:
    def __init__(self, max_rooms: int = MAX_ROOMS, tail: int = TAIL) -> None:
        self._max_rooms = max_rooms
        self._tail = tail
        self._rooms: OrderedDict[str, RoomReads] = OrderedDict()
        self._loads: dict[str, _Load] = {}
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
            load = _Load(self.generation)
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
        if load.generation != self.generation:
            return None
        reads = RoomReads(tail, self._tail)
        if not all([write(reads) for write in load.replay]):
            return None
        LOADS.inc()
        self._rooms[room] = reads
        while len(self._rooms) > self._max_rooms:
            self._rooms.popitem(last=False)
            EVICTIONS.inc()
        ROOMS.set(len(self._rooms))
        return reads

    # writes -----------------------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around a write to the store: one that fails clears the index (what the store holds
        is unknown); a refusal wrote nothing."""
        try:
            yield
        except ProtocolError:
            raise
        except BaseException:
            self.reset("store_error")
            raise

    def _apply(self, room: str, write: Write) -> None:
        """A finished write: to the room held (let go if it cannot follow), or kept for the
        load in flight."""
        reads = self._rooms.get(room)
        if reads is not None:
            if not write(reads):
                self._drop(room, "cannot_follow")
        elif (load := self._loads.get(room)) is not None:
            load.replay.append(write)

    def stored(self, inserted: Inserted) -> None:
        """Messages the store has just taken (and the repeats it skipped), room by room."""
        by_room: dict[str, list[tuple[ChatMessage, bool]]] = {}
        for message, fresh in zip(inserted.messages, inserted.fresh, strict=True):
            by_room.setdefault(message.room, []).append((message, fresh))
        for room, written in by_room.items():
            self._apply(room, partial(_stored, written))

    def deleted(self, room: str, message_id: str) -> None:
        def write(reads: RoomReads) -> bool:
            reads.deleted(message_id)
            return True

        self._apply(room, write)

    def marked(self, room: str, reader: str, marker_id: str) -> None:
        def write(reads: RoomReads) -> bool:
            reads.marked(reader, marker_id)
            return True

        self._apply(room, write)


def _stored(written: list[tuple[ChatMessage, bool]], reads: RoomReads) -> bool:
    """One write's messages of a room. Fresh ones that the reads hold already were in their
    snapshot (ids are unique); a snapshot that holds only some of them saw the write halfway
    (the new ones would go after later ones), and a repeat of a message not held is an old
    one sent again or one that another writer stored: the reads cannot follow either."""
    fresh = [message for message, new in written if new]
    held = [reads.holds(message.id) for message in fresh]
    if any(held) and not all(held):
        return False
    if not all(reads.holds(message.id) for message, new in written if not new):
        return False
    if not any(held):
        for message in fresh:
            reads.add(message.id, message.username, bool(message.deleted))
    return True
