"""Per served room, its newest messages in their current state: a join into a room this gateway
already serves takes its `msgHistory` from here instead of asking history (issue 11).

Why it has no gap. A room's record starts just before a joiner's history read is published,
while the room is bound and no delivery has been lost. History answers that read with every
message routed before it; every message routed after it reaches this gateway live (the room is
bound) and is noted here by the relay. So the read's answer plus what the relay noted since is
the room's whole history from the answer's oldest message on, in its current state (edits,
deletes and reactions replace a message by id when their rev is newer). The record is only
trusted while that stays true: it belongs to one binding of the room (`Bindings.serial`), and
a possible loss of deliveries (`lost()`, from the bus's `on_loss`) drops every record until the
bus reports the gap over (`resumed()`, from `on_gap`).

What it answers: the newest `history_default` (when it holds that many, or the whole room), and
`since` an id it holds, each as the `msgHistory` frame ready to write (`Shown`). The newest
page is encoded once per version of the record and shared by every join until the room
changes: in a storm, a hundred joins of a room read the same hundred messages. `sinceRev` and anything older go to history. Order is the order this
gateway received the messages, which is the order its live sockets saw them.

Seeding a cold room once (`warm`). When a gateway dies, its users come back to the others at
once, about a hundred per room, each with `since`: without a seeded record every one of them
would ask history for its own page, and history's queue would hold a hundred reads per room.
Instead the first join of a cold room starts one read of the newest `size` messages, and every
join that arrives until it is answered waits for that same read (single flight, per room and
binding); then each takes its `msgHistory` from the record (a `since` it holds: everything
after it) and asks history only for its own read state.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

from roomcast.shared import rpc

_CHANGES = frozenset({"updateChat", "editChat", "deleteChat", "react"})
_SIZE = 100  # messages kept per room (a since beyond them goes to history)


@dataclass(frozen=True, slots=True)
class Shown:
    """A joiner's `msgHistory`: the frame, and what the gateway notes of the messages in it."""

    frame: bytes
    ids: frozenset[str]  # held live events with these ids are dropped (`Member.go_live`)
    newest: str | None  # the id of its newest message: where a repair starts
    last_rev: int | None  # its largest rev: where a repair of changes starts


def shown(room: str, messages: list[dict[str, object]], newest: str | None = None) -> Shown:
    """`messages` as a `msgHistory` frame of the room (`newest`: the room's newest id, when
    `messages` are not in id order)."""
    ids = frozenset(str(m["id"]) for m in messages)
    revs = [rev for m in messages if isinstance(rev := m.get("rev"), int)]
    if newest is None and messages:
        newest = str(messages[-1]["id"])
    frame = orjson.dumps({"event": "msgHistory", "room": room, "data": messages})
    return Shown(frame, ids, newest, max(revs) if revs else None)


@dataclass(slots=True)
class _Record:
    serial: int  # the binding it belongs to
    token: int  # which reads may seed it: those published after it was made
    ready: bool = False  # a history answer has seeded it
    whole: bool = False  # the seed held the room's whole history
    messages: OrderedDict[str, dict[str, object]] = field(default_factory=OrderedDict)
    posted: set[str] = field(default_factory=set)  # new messages noted before the seed
    newest: tuple[int, Shown] | None = None  # the newest page as shown, for one `limit`

    def changed(self) -> None:
        self.newest = None


@dataclass(frozen=True, slots=True)
class Cached:
    """`msgHistory` from the cache, and the ack's `recovered` for a join with `since`."""

    shown: Shown
    recovered: bool | None


@dataclass(slots=True)
class _Flight:
    """The one seeding read of a room in progress, and the record it may seed."""

    token: int
    read: asyncio.Future[None]


Read = Callable[[int], Awaitable[rpc.HistoryReply]]  # the newest `limit` messages, from history


class RoomCache:
    def __init__(self, size: int = _SIZE) -> None:
        self._size = size
        self._rooms: dict[str, _Record] = {}
        self._suspended = False  # deliveries may be lost until the bus reports the gap over
        self._tokens = itertools.count(1)
        self._flights: dict[str, _Flight] = {}

    # seeding a cold room -------------------------------------------------------------------
    async def warm(self, room: str, serial: int | None, read: Read) -> bool:
        """Make sure the room's record is seeded, sharing one history read with every other
        join that asks meanwhile. Returns whether it is seeded (False: the cache may not be
        trusted now, or the read's answer came too late to seed it; ask history). Raises what
        the read raised, to every join that waited for it."""
        if self.ready(room, serial):
            return True
        record = self._rooms.get(room)
        flight = self._flights.get(room)
        if flight is None or record is None or flight.token != record.token:
            token = self.reading(room, serial)
            if token is None:
                return False
            flight = _Flight(token, asyncio.ensure_future(self._seed_by(room, token, read)))
            flight.read.add_done_callback(_retrieve)  # failed with nobody left waiting: fine
            self._flights[room] = flight
        # one joiner giving up (its socket closed) does not cancel the others' read
        await asyncio.shield(flight.read)
        return self.ready(room, serial)

    async def _seed_by(self, room: str, token: int, read: Read) -> None:
        try:
            self.seed(room, token, await read(self._size), self._size)
        finally:
            flight = self._flights.get(room)
            if flight is not None and flight.token == token:
                del self._flights[room]

    # the join ------------------------------------------------------------------------------
    def answer(
        self, room: str, serial: int | None, limit: int, since: tuple[str, int] | None
    ) -> Cached | None:
        """The joiner's history, if this record can give it whole: the newest `limit`, or
        (`since`: an id and the most a recovery holds) every message after that id."""
        record = self._valid(room, serial)
        if record is None or not record.ready:
            return None
        messages = record.messages
        if since is not None:
            since_id, most = since
            if since_id not in messages:
                return None
            ids = list(messages)
            after = ids[ids.index(since_id) + 1 :]
            if len(after) > most:
                return None  # history answers that one (the newest `most`, not recovered)
            return Cached(shown(room, [messages[i] for i in after]), recovered=True)
        if len(messages) < limit and not record.whole:
            return None
        if record.newest is None or record.newest[0] != limit:
            page = list(messages.values())[-limit:]
            record.newest = (limit, shown(room, page))
        return Cached(record.newest[1], recovered=None)

    def ready(self, room: str, serial: int | None) -> bool:
        """Whether the room's record is seeded for this binding (a join need not warm it)."""
        record = self._valid(room, serial)
        return record is not None and record.ready

    def reading(self, room: str, serial: int | None) -> int | None:
        """Called before a joiner's history read is published: the token that lets its answer
        seed the record (None: it may not)."""
        if self._suspended or serial is None:
            return None
        record = self._valid(room, serial)
        if record is None:
            record = self._rooms[room] = _Record(serial, next(self._tokens))
        return record.token

    def seed(self, room: str, token: int | None, reply: rpc.HistoryReply, limit: int) -> None:
        """The answer to a read of the newest `limit` messages, started under `token`."""
        record = self._rooms.get(room)
        if token is None or record is None or record.token != token or record.ready:
            return
        noted, posted = record.messages, record.posted
        record.messages = OrderedDict((m.id, m.wire()) for m in reply.messages)
        for message_id, message in noted.items():  # what came live meanwhile
            if message_id in record.messages or message_id in posted:
                self._put(record, message_id, message)  # newer than the answer, or after it
            # else: a change to a message older than the answer, which no answer holds
        record.whole = len(reply.messages) < limit
        record.ready = True
        record.posted = set()
        record.changed()
        self._trim(record)

    # the relay -----------------------------------------------------------------------------
    def note(self, room: str, event: str, body: bytes) -> None:
        """A room event relayed here: a message, or a message in its new state."""
        record = self._rooms.get(room)
        if record is None or event not in _CHANGES:
            return
        data = orjson.loads(body).get("data")
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            return
        message_id = data["id"]
        if not record.ready:
            if event == "updateChat":
                record.posted.add(message_id)
            self._put(record, message_id, data)
            if len(record.messages) > self._size:
                del self._rooms[room]  # too much before history answered: start over later
            return
        if event != "updateChat" and message_id not in record.messages:
            return  # a change to a message older than the record: not in any answer
        self._put(record, message_id, data)
        self._trim(record)

    def lost(self) -> None:
        """Deliveries may be lost from here on: nothing here can be trusted."""
        self._rooms.clear()
        self._suspended = True

    def resumed(self) -> None:
        """The bus delivers everything published from now on again."""
        self._suspended = False

    def prune(self, served: set[str]) -> None:
        for room in [r for r in self._rooms if r not in served]:
            del self._rooms[room]

    # ---------------------------------------------------------------------------------------
    def _valid(self, room: str, serial: int | None) -> _Record | None:
        record = self._rooms.get(room)
        if record is not None and (serial is None or record.serial != serial):
            del self._rooms[room]  # from an earlier binding: events were missed since
            return None
        return record

    @staticmethod
    def _put(record: _Record, message_id: str, message: dict[str, object]) -> None:
        old = record.messages.get(message_id)
        if old is None or _rev(message) >= _rev(old):
            record.messages[message_id] = message
            record.changed()

    def _trim(self, record: _Record) -> None:
        while len(record.messages) > self._size:
            record.messages.popitem(last=False)
            record.whole = False
            record.changed()


def _retrieve(read: asyncio.Future[None]) -> None:
    if not read.cancelled():
        read.exception()


def _rev(message: dict[str, object]) -> int:
    rev = message.get("rev")
    return rev if isinstance(rev, int) else 0
