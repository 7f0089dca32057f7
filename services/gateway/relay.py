"""Bus deliveries to local sockets: one broker message per room event, its body (the final
client frame, UTF-8) handed as the same bytes to every local member of the room: no decoding,
encoding or per-socket copy on the way (`rawsend.py` frames it per socket), one clock read and one
metric update per event, not per socket. Presence's messages carry a room's changes of one
publication, one frame per line: each line is read once and written as an event of its own,
less the changes that a member who joined moments ago was shown already (`Member.listed`).

It also drops a chat message that arrives again under an id it has already relayed (a client
that re-sent after reconnecting to another gateway, or a retry of a publication the broker did
not confirm), remembers recent messages so that a re-send on this gateway is acknowledged
without being published again once it is confirmed, and keeps, per room, the id of
the last message relayed there: where a repair after lost deliveries starts (`repair.py`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import orjson
import structlog

from roomcast.shared import topics
from roomcast.shared.bus import Message
from roomcast.shared.topics import Header

from .connection import count_out
from .logthrottle import LogThrottle
from .membership import PRESENCE_CHANGES, Membership, changes
from .metrics import FANOUT
from .roomcache import RoomCache
from .shedding import Shedder, age_of

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Seen:
    publication: str
    frame: str
    relayed: bool  # delivered to this gateway's sockets (False: published here, not back yet)
    origin: str = ""  # the local connection that sent it, if one did
    # published here and not (yet) confirmed by the broker: no proof that it will be stored, so
    # a retry publishes this same message again (same stamp, same publication) instead of
    # acknowledging it, and the relay still delivers it to this gateway's sockets only once
    pending: bool = False


class RecentMessages:
    """A memory of recent chat messages by (room, id), bounded in entries and in bytes (its keys
    and frames come from clients)."""

    def __init__(self, size: int = 20_000, max_bytes: int = 32 * 1024 * 1024) -> None:
        self._size = size
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[tuple[str, str], Seen] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, room: str, message_id: str) -> Seen | None:
        return self._items.get((room, message_id))

    def remember(self, room: str, message_id: str, seen: Seen) -> None:
        old = self._items.pop((room, message_id), None)
        if old is not None:
            self._bytes -= len(old.frame)
        self._items[(room, message_id)] = seen
        self._bytes += len(seen.frame)
        while len(self._items) > self._size or self._bytes > self._max_bytes:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= len(dropped.frame)


def _change(line: bytes, room: str) -> tuple[str, str] | None:
    """(event, username) of a presence change of `room`, or None for anything else."""
    try:
        frame = orjson.loads(line)
        event, username, where = frame["event"], frame["data"]["username"], frame["room"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(event, str) or event not in PRESENCE_CHANGES:
        return None
    if not isinstance(username, str) or where != room:
        return None
    return event, username


class Relay:
    def __init__(
        self,
        membership: Membership,
        recent: RecentMessages,
        cache: RoomCache | None = None,
        shedder: Shedder | None = None,
    ) -> None:
        self._membership = membership
        self._shedder = shedder
        self._recent = recent
        self._cache = cache if cache is not None else RoomCache()
        self.last_ids: dict[str, str] = {}  # room -> id of the last chat message relayed there
        self.history_revs: dict[str, int] = {}  # room -> the largest rev of a joiner's history
        self._bad_lines = LogThrottle()

    async def on_message(self, message: Message) -> None:
        route = topics.parse(message.routing_key)
        body = message.body  # the final client frame: the same bytes go to every socket
        headers = message.headers
        size = len(body)
        age = age_of(headers.get(Header.SENT_AT))  # read once: shedding and the fan-out metric
        if route.kind == "room" and route.event == topics.PRESENCE_CHANGES:
            self._presence(route.name, body)
            return
        if route.kind == "room":
            message_id = headers.get(Header.MESSAGE_ID)
            if message_id is not None:
                publication = headers.get(Header.PUBLICATION, "")
                if not self.first_time(route.name, message_id, publication, body.decode()):
                    return
                self.last_ids[route.name] = message_id
            event = route.event
            self._cache.note(route.name, event, body)
            shedder = self._shedder
            if shedder is not None and age is not None and shedder.behind(age):
                shedder.shed(route.name, self._membership.members(route.name), age)
                return
            origin = headers.get(Header.ORIGIN)
            not_to = headers.get(Header.NOT_TO)
            now = time.monotonic()
            live = 0
            for member in self._membership.members(route.name):
                conn = member.conn
                if conn.id == origin or (not_to is not None and conn.username == not_to):
                    continue
                if member.held is None:
                    conn.enqueue(body, event, size, now)
                    live += 1
                else:
                    member.deliver(body, event, message_id, size)
            if live:
                count_out(event, live)
        elif route.kind == "user":
            for conn in self._membership.user_connections(route.name):
                conn.push(body, route.event, size)
        if age is not None:
            FANOUT.observe(max(0.0, age))

    def _presence(self, room: str, body: bytes) -> None:
        """A room's `userJoin`/`userLeave` frames of one publication, one per line (presence's
        announcer.py): each written as its own event, in order, less those that a member who
        joined moments ago was already shown (`Member.listed`). A line that is not such a
        change of the room is dropped (logged, throttled), the others still go."""
        lines = []
        for line in body.split(b"\n"):
            change = _change(line, room)
            if change is None:
                left_out = self._bad_lines.allow("presence")
                if left_out is not None:
                    log.warning(
                        "presence change dropped: not a userJoin or userLeave frame of the room",
                        room=room,
                        left_out=left_out,
                    )
                continue
            lines.append((line, *change, len(line)))
        now = time.monotonic()
        written = {"userJoin": 0, "userLeave": 0}
        for member in self._membership.members(room):
            if member.held is not None:
                for line, event, _, size in lines:
                    member.deliver(line, event, None, size)
                continue
            listed, enqueue = member.listed, member.conn.enqueue
            for line, event, username, size in lines:
                if listed is None or changes(listed, event, line, username):
                    enqueue(line, event, size, now)
                    written[event] += 1
        for event, n in written.items():
            if n:
                count_out(event, n)

    def first_time(self, room: str, message_id: str, publication: str, frame: str) -> bool:
        """Whether this chat message is news here (and remember it as relayed)."""
        seen = self._recent.get(room, message_id)
        if seen is None:
            self._recent.remember(room, message_id, Seen(publication, frame, relayed=True))
            return True
        if seen.publication == publication and not seen.relayed:
            seen.relayed = True
            return True
        return False

    def replay(self, room: str, message_id: str, frame: str) -> bool:
        """Deliver a stored message that may have been lost on the way here (a repair), unless
        this gateway's sockets already had it; returns whether it was delivered."""
        seen = self._recent.get(room, message_id)
        if seen is not None and seen.relayed:
            return False
        origin = seen.origin if seen is not None else ""
        self._recent.remember(room, message_id, Seen("", frame, relayed=True, origin=origin))
        self.last_ids[room] = message_id
        size = len(frame.encode())
        for member in self._membership.members(room):
            if member.conn.id != origin:
                member.deliver(frame, "updateChat", message_id, size)
        return True

    def note_history(self, room: str, last_id: str | None, last_rev: int | None = None) -> None:
        """A joiner's history ended at `last_id` and held revs up to `last_rev`: where a repair
        starts (messages, changes) if nothing was relayed."""
        if last_id is not None:
            self.last_ids.setdefault(room, last_id)
        if last_rev is not None:
            self.history_revs[room] = max(last_rev, self.history_revs.get(room, 0))

    def prune(self, served: set[str]) -> None:
        """Forget the rooms this gateway no longer serves (keeps `last_ids` bounded)."""
        for room in [r for r in self.last_ids if r not in served]:
            del self.last_ids[room]
        for room in [r for r in self.history_revs if r not in served]:
            del self.history_revs[room]
