"""Bus deliveries to local sockets: one broker message per room event, written as the same
text to every local socket of the room.

It also drops a chat message that arrives again under an id it has already relayed (a client
that re-sent after reconnecting to another gateway), and remembers recent messages so a re-send
on this gateway is acknowledged without being published again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from roomcast.shared.bus import Message

from .metrics import FANOUT
from .registry import Registry


@dataclass(slots=True)
class Seen:
    publication: str
    frame: str
    relayed: bool


class RecentMessages:
    """A bounded memory of recent chat messages by (room, id)."""

    def __init__(self, size: int = 20_000) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], Seen] = OrderedDict()

    def get(self, room: str, message_id: str) -> Seen | None:
        return self._items.get((room, message_id))

    def forget(self, room: str, message_id: str, publication: str) -> None:
        """Drop an unconfirmed publication, so that a retry of the same id is published."""
        seen = self._items.get((room, message_id))
        if seen is not None and seen.publication == publication:
            del self._items[(room, message_id)]

    def remember(self, room: str, message_id: str, seen: Seen) -> None:
        self._items[(room, message_id)] = seen
        if len(self._items) > self._size:
            self._items.popitem(last=False)


class Relay:
    def __init__(self, registry: Registry, recent: RecentMessages) -> None:
        self._registry = registry
        self._recent = recent

    async def on_message(self, message: Message) -> None:
        kind, _, rest = message.routing_key.partition(".")
        name, _, event = rest.partition(".")
        frame = message.body.decode()
        headers = message.headers
        if kind == "room":
            message_id = headers.get("id")
            publication = headers.get("pub", "")
            if message_id is not None and not self._first_time(
                name, message_id, publication, frame
            ):
                return
            origin = headers.get("origin")
            for conn in tuple(self._registry.rooms.get(name, ())):
                if conn.id != origin:
                    conn.deliver(name, frame, event, message_id)
        elif kind == "user":
            for conn in tuple(self._registry.users.get(name, ())):
                conn.push(frame, event)
        sent = headers.get("ts")
        if sent is not None:
            FANOUT.observe(max(0.0, time.time() - float(sent)))

    def _first_time(self, room: str, message_id: str, publication: str, frame: str) -> bool:
        seen = self._recent.get(room, message_id)
        if seen is None:
            self._recent.remember(room, message_id, Seen(publication, frame, relayed=True))
            return True
        if seen.publication == publication and not seen.relayed:
            seen.relayed = True
            return True
        return False
