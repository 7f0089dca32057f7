"""Who is connected, through which gateway, in which rooms: presence's state, with no I/O.

Every change returns what the rest of the system must be told (rooms whose user list changed,
users who left a room), so the service publishes exactly those events. The state can be rebuilt
from gateway heartbeats alone: each carries the gateway's full roster.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from roomcast.shared.rpc import Heartbeat


@dataclass(slots=True)
class Conn:
    conn: str
    gateway: str
    username: str
    session_hash: str
    rooms: dict[str, float] = field(default_factory=dict)  # room -> when presence added it
    seen: float = 0.0


@dataclass(slots=True)
class Changes:
    """What a state change means for clients."""

    joined: list[tuple[str, str, str]] = field(default_factory=list)  # (room, username, conn)
    left: list[tuple[str, str]] = field(default_factory=list)  # (room, username)
    rooms: set[str] = field(default_factory=set)  # rooms whose activeUsers changed

    def merge(self, other: Changes) -> None:
        self.joined += other.joined
        self.left += other.left
        self.rooms |= other.rooms


class PresenceState:
    def __init__(self) -> None:
        self.conns: dict[str, Conn] = {}
        self._room_users: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self.gateways: dict[str, float] = {}

    # queries -----------------------------------------------------------------------------
    def users(self, room: str) -> list[str]:
        return sorted(self._room_users.get(room, {}))

    def is_online(self, username: str) -> bool:
        return any(c.username == username for c in self.conns.values())

    def session_hashes(self, username: str, *, except_conn: str | None = None) -> set[str]:
        """Sessions of the live connections that hold `username`."""
        return {
            c.session_hash
            for c in self.conns.values()
            if c.username == username and c.conn != except_conn
        }

    def others_in(self, room: str, *usernames: str) -> set[str]:
        return set(self._room_users.get(room, {})) - set(usernames)

    def in_room(self, conn: str, room: str) -> bool:
        c = self.conns.get(conn)
        return c is not None and room in c.rooms

    # changes -----------------------------------------------------------------------------
    def touch(self, gateway: str, now: float) -> None:
        self.gateways[gateway] = now

    def join(
        self, gateway: str, conn: str, username: str, session_hash: str, room: str, now: float
    ) -> Changes:
        c = self.conns.get(conn)
        if c is None:
            c = self.conns[conn] = Conn(conn, gateway, username, session_hash, seen=now)
        changes = Changes(rooms={room})
        c.rooms.setdefault(room, now)
        members = self._room_users[room][username]
        members.add(conn)
        changes.joined.append((room, username, conn))
        return changes

    def leave(self, conn: str, room: str) -> Changes:
        c = self.conns.get(conn)
        if c is None or c.rooms.pop(room, None) is None:
            return Changes()
        return self._forget(c, room)

    def disconnect(self, conn: str) -> Changes:
        c = self.conns.pop(conn, None)
        changes = Changes()
        if c is not None:
            for room in list(c.rooms):
                changes.merge(self._forget(c, room))
        return changes

    def drop_gateway(self, gateway: str) -> Changes:
        self.gateways.pop(gateway, None)
        changes = Changes()
        for conn in [c.conn for c in self.conns.values() if c.gateway == gateway]:
            changes.merge(self.disconnect(conn))
        return changes

    def expired(self, now: float, expiry: float) -> list[str]:
        return [g for g, seen in self.gateways.items() if now - seen > expiry]

    def reconcile(self, beat: Heartbeat, now: float, grace: float) -> Changes:
        """Make the gateway's part of the state equal its roster.

        Entries presence added less than `grace` ago are kept even when the roster lacks them:
        the heartbeat may have been taken before the join it would contain.
        """
        self.touch(beat.gateway, now)
        changes = Changes()
        listed = {e.conn: e for e in beat.connections}
        for c in [c for c in self.conns.values() if c.gateway == beat.gateway]:
            entry = listed.get(c.conn)
            wanted = set(entry.rooms) if entry else set()
            for room, added in list(c.rooms.items()):
                if room not in wanted and now - added > grace:
                    del c.rooms[room]
                    changes.merge(self._forget(c, room))
            if entry is None and not c.rooms and now - c.seen > grace:
                del self.conns[c.conn]
        for entry in beat.connections:
            known = self.conns.get(entry.conn)
            if known is None:
                known = self.conns[entry.conn] = Conn(
                    entry.conn, beat.gateway, entry.username, entry.session_hash, seen=now
                )
            for room in entry.rooms:
                if room not in known.rooms:
                    known.rooms[room] = now
                    self._room_users[room][known.username].add(known.conn)
                    changes.rooms.add(room)
        return changes

    def _forget(self, c: Conn, room: str) -> Changes:
        users = self._room_users.get(room)
        if users is None:
            return Changes()
        conns = users.get(c.username)
        if conns is None:
            return Changes()
        conns.discard(c.conn)
        changes = Changes(rooms={room})
        if not conns:
            del users[c.username]
            changes.left.append((room, c.username))
        if not users:
            del self._room_users[room]
        return changes
