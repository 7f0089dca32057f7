"""Which local sockets are in which room, and the bus bindings that follow from it.

The gateway's one queue is bound to a room's key while at least one local socket is in the
room, and to a user's key while that user has a local socket (invitations), so the broker sends
this gateway only the traffic of the rooms it serves.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from functools import partial

from roomcast.shared import topics
from roomcast.shared.bus import Subscription

from .connection import Connection


class Registry:
    def __init__(self) -> None:
        self.rooms: dict[str, set[Connection]] = defaultdict(set)
        self.users: dict[str, set[Connection]] = defaultdict(set)
        self.connections: set[Connection] = set()
        self._subscription: Subscription | None = None
        self._bound: dict[str, int] = {}
        self._binding: dict[str, asyncio.Future[None]] = {}

    def attach(self, subscription: Subscription) -> None:
        self._subscription = subscription

    async def enter_room(self, conn: Connection, room: str) -> None:
        """Count `conn` in the room; returns once this gateway receives the room's events."""
        if conn in self.rooms[room]:
            return
        self.rooms[room].add(conn)
        await self._acquire(topics.room_pattern(room))

    async def leave_room(self, conn: Connection, room: str) -> None:
        members = self.rooms.get(room)
        if members is None or conn not in members:
            return
        members.discard(conn)
        if not members:
            del self.rooms[room]
        await self._release(topics.room_pattern(room))

    async def add_user(self, conn: Connection, username: str) -> None:
        if conn in self.users[username]:
            return
        self.users[username].add(conn)
        await self._acquire(topics.user_pattern(username))

    async def remove(self, conn: Connection) -> None:
        """Forget a closed connection everywhere."""
        self.connections.discard(conn)
        for room in list(conn.rooms):
            await self.leave_room(conn, room)
        if conn.username is not None:
            members = self.users.get(conn.username)
            if members is not None and conn in members:
                members.discard(conn)
                if not members:
                    del self.users[conn.username]
                await self._release(topics.user_pattern(conn.username))

    def roster(self) -> list[dict[str, object]]:
        """What presence must know of this gateway, in the shape of `rpc.RosterEntry` (sent in
        every heartbeat; plain dicts, since a gateway of 10,000 sockets builds it every beat)."""
        return [
            {
                "conn": c.id,
                "username": c.username,
                "session_hash": c.session_hash,
                "rooms": sorted(c.presence_rooms),
            }
            for c in self.connections
            if c.username is not None and c.session_hash is not None
        ]

    async def _acquire(self, pattern: str) -> None:
        """Count one more holder of `pattern`; the first one binds it, and holders arriving
        while that bind is under way wait for it (one lock per key, so rooms don't queue behind
        each other's binds)."""
        self._bound[pattern] = self._bound.get(pattern, 0) + 1
        try:
            pending = self._binding.get(pattern)
            if pending is None and self._bound[pattern] == 1 and self._subscription is not None:
                pending = asyncio.ensure_future(self._subscription.bind(pattern))
                self._binding[pattern] = pending
                pending.add_done_callback(partial(self._bound_done, pattern))
            if pending is not None:
                await asyncio.shield(pending)
        except BaseException:
            await self._release(pattern)
            raise

    def _bound_done(self, pattern: str, _: asyncio.Future[None]) -> None:
        self._binding.pop(pattern, None)

    async def _release(self, pattern: str) -> None:
        count = self._bound.get(pattern, 0) - 1
        if count > 0:
            self._bound[pattern] = count
            return
        self._bound.pop(pattern, None)
        if self._subscription is not None:
            await self._subscription.unbind(pattern)
