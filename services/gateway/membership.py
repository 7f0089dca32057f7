"""Which local sockets are in which room, and which users are on this gateway: the one record of
it, with the rooms' bus bindings that follow from it (users' events come through one binding of
the gateway's, `topics.USER_EVENTS`, and are routed here by username).

A socket enters a room as a `Member` whose room events are held back while its join is answered
(so they can follow its `msgHistory`), and goes live after. Presence is told of a member only
once it is admitted; the heartbeat roster lists exactly the admitted members. Whatever fails
half-way through a join is undone here, so the socket, this record and the bindings never
disagree.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import orjson

from roomcast.shared import topics

from .bindings import Bindings
from .connection import Connection


@dataclass(slots=True)
class Held:
    """A room event that arrived while its member's join was being answered."""

    frame: str | bytes
    event: str
    message_id: str | None
    size: int


@dataclass(slots=True, eq=False)
class Member:
    conn: Connection
    room: str
    held: list[Held] | None = field(default_factory=list)  # None once live
    admitted: bool = False  # presence counts it
    private: bool = False  # the room is private to two users
    ack: dict[str, object] | None = None  # the first join's ack data, which a repeat repeats
    # the user list as the client keeps it, for `LISTED_SECONDS` after going live: presence
    # changes it already shows are not written (a paced room's changes from before the
    # snapshot can come after it: presence/announcer.py)
    listed: set[str] | None = None

    def deliver(self, frame: str | bytes, event: str, message_id: str | None, size: int) -> None:
        held = self.held
        if held is None:
            self.conn.push(frame, event, size)
        else:
            held.append(Held(frame, event, message_id, size))

    def go_live(self, already_seen: AbstractSet[str], users: Iterable[str] = ()) -> None:
        """Release what was held, less what the joiner was already shown.

        - Messages its history showed, and chat messages held before the last of those: they
          are older than the history (it holds the newest N, which moved on while the join
          was answered), so written live they would arrive out of order; the client pages back
          over HTTP for them like for any message older than its history.
        - Presence changes its snapshot (`users`) already holds: a `userJoin` of a user in the
          list, a `userLeave` of one not in it (presence answers a batch of joins after their
          `userJoin`s, and each snapshot includes the joins judged before it: announcer.py).
          Replayed on the snapshot, what is left changes the list at every step. The same
          holds for `LISTED_SECONDS` after going live (`changes`)."""
        held, self.held = self.held or [], None
        last = -1
        for i, item in enumerate(held):
            if item.message_id is not None and item.message_id in already_seen:
                last = i
        listed = set(users)
        for i, item in enumerate(held):
            if item.message_id is not None and (
                item.message_id in already_seen or (i < last and item.event == "updateChat")
            ):
                continue
            if item.event in PRESENCE_CHANGES and not changes(listed, item.event, item.frame):
                continue
            self.conn.push(item.frame, item.event, item.size)
        self.listed = listed
        asyncio.get_running_loop().call_later(LISTED_SECONDS, self._unlist)

    def _unlist(self) -> None:
        self.listed = None


PRESENCE_CHANGES = frozenset({"userJoin", "userLeave"})
# how long after going live a member's presence changes are checked against its list: longer
# than a paced room holds its changes (presence/announcer.py: ~100 ms), with room to spare
LISTED_SECONDS = 2.0


def changes(listed: set[str], event: str, frame: str | bytes, username: str | None = None) -> bool:
    """Whether a `userJoin`/`userLeave` changes the list (and apply it if it does). `username`
    when the caller has read it from the frame already."""
    if username is None:
        try:
            username = orjson.loads(frame)["data"]["username"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return True  # not ours to judge: written as it came
    if event == "userJoin":
        if username in listed:
            return False
        listed.add(username)
    else:
        if username not in listed:
            return False
        listed.discard(username)
    return True


class Membership:
    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self.bindings = Bindings()
        self._rooms: dict[str, dict[Connection, Member]] = {}
        self._of: dict[Connection, dict[str, Member]] = {}
        self._users: dict[str, set[Connection]] = {}

    # queries -------------------------------------------------------------------------------
    def member(self, conn: Connection, room: str) -> Member | None:
        rooms = self._of.get(conn)
        return rooms.get(room) if rooms is not None else None

    def rooms_of(self, conn: Connection) -> Mapping[str, Member]:
        return self._of.get(conn, {})

    def members(self, room: str) -> Iterable[Member]:
        """The room's local members, as a snapshot safe to iterate while it changes."""
        members = self._rooms.get(room)
        return tuple(members.values()) if members else ()

    def user_connections(self, username: str) -> Iterable[Connection]:
        conns = self._users.get(username)
        return tuple(conns) if conns else ()

    def rooms(self) -> list[str]:
        return list(self._rooms)

    def roster(self) -> list[dict[str, object]]:
        """What presence must know of this gateway, in the shape of `rpc.RosterEntry` (sent in
        every heartbeat; plain dicts, since a gateway of 10,000 sockets builds it every beat)."""
        roster: list[dict[str, object]] = []
        for conn, rooms in self._of.items():
            if conn.username is None or conn.session_hash is None:
                continue
            roster.append(
                {
                    "conn": conn.id,
                    "username": conn.username,
                    "session_hash": conn.session_hash,
                    "rooms": sorted(r for r, m in rooms.items() if m.admitted),
                }
            )
        return roster

    # changes -------------------------------------------------------------------------------
    def open(self, conn: Connection) -> None:
        self.connections.add(conn)
        self._of[conn] = {}

    async def enter(self, conn: Connection, room: str) -> Member:
        """Add a member holding its room's events; returns once this gateway receives them."""
        member = Member(conn, room)
        self._of.setdefault(conn, {})[room] = member
        self._rooms.setdefault(room, {})[conn] = member
        try:
            await self.bindings.hold(topics.room_pattern(room))
        except BaseException:
            self._forget(member)
            raise
        return member

    async def leave(self, member: Member) -> None:
        """Remove a member (idempotent); the room's last one releases its binding."""
        if self._forget(member):
            await self.bindings.release(topics.room_pattern(member.room))

    def identify(self, conn: Connection, username: str) -> None:
        """Route the user's own events (invitations, read markers) to this connection too, once
        presence admitted it. They reach every gateway (`topics.USER_EVENTS`, bound once at
        start), so this is local state alone: a refused join never gets here."""
        self._users.setdefault(username, set()).add(conn)

    async def close(self, conn: Connection) -> list[str]:
        """Forget a closed connection everywhere; returns the rooms presence had admitted it to."""
        self.connections.discard(conn)
        admitted = []
        for member in list(self._of.get(conn, {}).values()):
            if member.admitted:
                admitted.append(member.room)
            await self.leave(member)
        self._of.pop(conn, None)
        if conn.username is not None:
            self._drop_user(conn, conn.username)
        return admitted

    def _forget(self, member: Member) -> bool:
        rooms = self._of.get(member.conn)
        if rooms is None or rooms.get(member.room) is not member:
            return False
        del rooms[member.room]
        members = self._rooms[member.room]
        del members[member.conn]
        if not members:
            del self._rooms[member.room]
        return True

    def _drop_user(self, conn: Connection, username: str) -> None:
        conns = self._users.get(username)
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        if not conns:
            del self._users[username]
