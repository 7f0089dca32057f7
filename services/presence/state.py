"""Who is connected, through which gateway, in which rooms: presence's state, with no I/O.

Every change returns what the rest of the system must be told (PROTOCOL.md 2.1): a user who
went from absent to present in a room (their first connection there), or from present to
absent (their last one gone), in the order it happened; and the names whose last connection
went, to be reserved for their session (2.2). The state can be rebuilt from gateway heartbeats
alone: each carries the gateway's full roster.

Names are compared by `username_key` (case-folded TR39 skeleton): `holders` answers "who holds
this name" through an index, not a scan of every connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from roomcast.shared.names import username_key
from roomcast.shared.rpc import Heartbeat


@dataclass(slots=True)
class Conn:
    conn: str
    gateway: str
    username: str
    session_hash: str
    key: str  # username_key(username)
    rooms: dict[str, float] = field(default_factory=dict)  # room -> when presence added it
    seen: float = 0.0


class Change(NamedTuple):
    """A user's presence in a room flipped: `present` True is a `userJoin`, False a
    `userLeave`; `conn` made it (its own socket does not get its own `userJoin`)."""

    room: str
    username: str
    present: bool
    conn: str = ""


class Released(NamedTuple):
    """A name whose last connection went: kept for `session_hash` for the grace period."""

    key: str
    username: str
    session_hash: str


@dataclass(slots=True)
class Changes:
    """What a state change means for clients, in the order it happened."""

    presence: list[Change] = field(default_factory=list)
    released: list[Released] = field(default_factory=list)

    def merge(self, other: Changes) -> None:
        self.presence += other.presence
        self.released += other.released

    @property
    def joined(self) -> list[tuple[str, str]]:
        return [(c.room, c.username) for c in self.presence if c.present]

    @property
    def left(self) -> list[tuple[str, str]]:
        return [(c.room, c.username) for c in self.presence if not c.present]


class PresenceState:
    def __init__(self) -> None:
        self.conns: dict[str, Conn] = {}
        self._room_users: dict[str, dict[str, set[str]]] = {}  # room -> username -> conns
        self._by_key: dict[str, set[str]] = {}  # username_key -> conns
        self.gateways: dict[str, float] = {}

    # queries -----------------------------------------------------------------------------
    def users(self, room: str) -> list[str]:
        return sorted(self._room_users.get(room, {}))

    def holders(self, key: str, *, except_conn: str | None = None) -> list[Conn]:
        """The live connections whose username has this key."""
        return [self.conns[c] for c in self._by_key.get(key, ()) if c != except_conn]

    def session_hashes(self, username: str, *, except_conn: str | None = None) -> set[str]:
        """Sessions of the live connections that hold `username` or a look-alike of it."""
        return {
            c.session_hash for c in self.holders(username_key(username), except_conn=except_conn)
        }

    def others_in(self, room: str, *usernames: str) -> set[str]:
        return set(self._room_users.get(room, {})) - set(usernames)

    def in_room(self, conn: str, room: str) -> bool:
        c = self.conns.get(conn)
        return c is not None and room in c.rooms

    # changes -----------------------------------------------------------------------------
    def touch(self, gateway: str, now: float) -> None:
        self.gateways[gateway] = now

    def touch_all(self, now: float) -> None:
        """Presence itself heard nothing for a while (its broker was away): every gateway gets
        a whole expiry from now to be heard again before it is forgotten."""
        for gateway in self.gateways:
            self.gateways[gateway] = now

    def join(
        self, gateway: str, conn: str, username: str, session_hash: str, room: str, now: float
    ) -> Changes:
        c = self.conns.get(conn)
        if c is None:
            c = self._add(Conn(conn, gateway, username, session_hash, username_key(username)), now)
        changes = Changes()
        if room not in c.rooms:
            c.rooms[room] = now
            self._enter(c, room, changes)
        return changes

    def leave(self, conn: str, room: str) -> Changes:
        c = self.conns.get(conn)
        changes = Changes()
        if c is not None and c.rooms.pop(room, None) is not None:
            self._forget(c, room, changes)
        return changes

    def disconnect(self, conn: str) -> Changes:
        changes = Changes()
        c = self.conns.get(conn)
        if c is not None:
            for room in list(c.rooms):
                del c.rooms[room]
                self._forget(c, room, changes)
            self._remove(c, changes)
        return changes

    def left_unseen(
        self, username: str, session_hash: str | None, rooms: list[str], *, gone: bool
    ) -> Changes:
        """A connection this state never held left `rooms` (presence took over after it
        joined, so the room still counts its user): the user leaves each room where no known
        connection of theirs is; with `gone` (the socket closed) and no known holder of the
        name, the name is released for `session_hash`."""
        changes = Changes()
        for room in dict.fromkeys(rooms):
            if username not in self._room_users.get(room, {}):
                changes.presence.append(Change(room, username, False))
        key = username_key(username)
        if gone and session_hash and key not in self._by_key:
            changes.released.append(Released(key, username, session_hash))
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
                    self._forget(c, room, changes)
            if entry is None and not c.rooms and now - c.seen > grace:
                self._remove(c, changes)
        for entry in beat.connections:
            known = self.conns.get(entry.conn)
            if known is None:
                key = username_key(entry.username)
                known = self._add(
                    Conn(entry.conn, beat.gateway, entry.username, entry.session_hash, key), now
                )
            for room in entry.rooms:
                if room not in known.rooms:
                    known.rooms[room] = now
                    # no origin: the connection had no snapshot from this state, and may have
                    # been told it left (a gateway dropped while presence could not hear it)
                    self._enter(known, room, changes, origin="")
        return changes

    # internals ---------------------------------------------------------------------------
    def _add(self, c: Conn, now: float) -> Conn:
        c.seen = now
        self.conns[c.conn] = c
        self._by_key.setdefault(c.key, set()).add(c.conn)
        return c

    def _remove(self, c: Conn, changes: Changes) -> None:
        del self.conns[c.conn]
        holders = self._by_key.get(c.key)
        if holders is not None:
            holders.discard(c.conn)
            if not holders:
                del self._by_key[c.key]
                changes.released.append(Released(c.key, c.username, c.session_hash))

    def _enter(self, c: Conn, room: str, changes: Changes, origin: str | None = None) -> None:
        """`origin`: the connection that skips its own `userJoin` (a joiner, whose snapshot
        lists itself); by default `c`'s own."""
        members = self._room_users.setdefault(room, {}).setdefault(c.username, set())
        if not members:
            changes.presence.append(
                Change(room, c.username, True, c.conn if origin is None else origin)
            )
        members.add(c.conn)

    def _forget(self, c: Conn, room: str, changes: Changes) -> None:
        users = self._room_users.get(room)
        conns = users.get(c.username) if users is not None else None
        if users is None or conns is None:
            return
        conns.discard(c.conn)
        if not conns:
            del users[c.username]
            changes.presence.append(Change(room, c.username, False))
        if not users:
            del self._room_users[room]
