"""Which local sockets are in which room, and the bus bindings that follow from it.

The gateway's one queue is bound to a room's key while at least one local socket is in the
room, and to a user's key while that user has a local socket (invitations), so the broker sends
this gateway only the traffic of the rooms it serves.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from roomcast.shared import topics
from roomcast.shared.bus import Subscription
from roomcast.shared.rpc import RosterEntry

from .connection import Connection


class Registry:
    def __init__(self) -> None:
        self.rooms: dict[str, set[Connection]] = defaultdict(set)
        self.users: dict[str, set[Connection]] = defaultdict(set)
        self.connections: set[Connection] = set()
        self._subscription: Subscription | None = None
        self._bound: dict[str, int] = {}
        self._lock = asyncio.Lock()

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

    def roster(self) -> list[RosterEntry]:
        """What presence must know of this gateway (sent in every heartbeat)."""
        return [
            RosterEntry(
                conn=c.id,
                username=c.username,
                session_hash=c.session_hash,
                rooms=sorted(c.presence_rooms),
            )
            for c in self.connections
            if c.username is not None and c.session_hash is not None
        ]

    async def _acquire(self, pattern: str) -> None:
        async with self._lock:
            count = self._bound.get(pattern, 0)
            if count == 0 and self._subscription is not None:
                await self._subscription.bind(pattern)
            self._bound[pattern] = count + 1

    async def _release(self, pattern: str) -> None:
        async with self._lock:
            count = self._bound.get(pattern, 0) - 1
            if count > 0:
                self._bound[pattern] = count
                return
            self._bound.pop(pattern, None)
            if self._subscription is not None:
                await self._subscription.unbind(pattern)
