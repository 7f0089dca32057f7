"""The storage seam: what history and presence need from a database.

`MongoMessageStore` and `MongoRoomStore` (pymongo's asyncio API) implement it; only
`roomcast.shared.store.mongo` imports pymongo. Store failures surface as `StoreUnavailableError`
so consumers can requeue instead of losing a message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from roomcast.shared.errors import ProtocolError
from roomcast.shared.models import ChatMessage
from roomcast.shared.moderation import (
    MAX_SANCTIONS,
    RoomModeration,
    RoomOwner,
    Sanction,
    SanctionKind,
)

UNREAD_CAP = 999  # `unread` counts stop here (PROTOCOL.md 2.3)
MAX_DISTINCT_REACTIONS = 20


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailableError(StoreError):
    """The database did not answer or refused the operation."""


class ReadState(NamedTuple):
    """A reader's place in a room: the marker's message id (None before the first `markRead`)
    and how many messages by others, not deleted, follow it (at most `UNREAD_CAP`)."""

    last_read: str | None
    unread: int


class Inserted(NamedTuple):
    """What `insert_new` did: each input as stored, and whether this call stored it (False: a
    repeat of a message stored earlier, or earlier in the same list)."""

    messages: list[ChatMessage]
    fresh: list[bool]


class TailEntry(NamedTuple):
    """What a read count needs of a stored message: its stored order and whether it counts."""

    seq: int
    id: str
    username: str
    deleted: bool


class ReadTail(NamedTuple):
    """A room's read markers and its newest messages, what history's read index is loaded from.

    `markers`: reader -> (seq, id) of its marker. `messages`: the newest, oldest first.
    `floor`: the seq of the newest message *not* in `messages`, None when they are the whole
    room; a marker above it has every message after it in `messages`."""

    markers: dict[str, tuple[int, str]]
    messages: list[TailEntry]
    floor: int | None


class MessageStore(Protocol):
    """Messages of every room, in the order they were stored, unique on (room, id).

    Revs (PROTOCOL.md 2.3): every change to a room (a new message, an edit, a delete, a
    reaction) gets rev = max(the caller's proposal, the room's largest rev + 1), so a room's revs
    are unique and grow in the order the changes were stored. A change that changes nothing (a
    reaction already there, an edit to the same body, a second delete) keeps the message and its
    rev as they are. Messages keep their stored order (`seq`) whatever their rev; reads return
    them in their current state, tombstones (`deleted: True`, body "") included.

    The author identity (a session hash) is stored beside a message, never in its wire object;
    edits and deletes compare it with the requester's (or, for a message stored without one,
    the usernames). Refusals are `ProtocolError`s: `not_found` (no such message in the room,
    or it is deleted, for an edit or a reaction), `forbidden`, `invalid` (too many emoji).
    The store assumes one writer at a time (history's single active consumer), which calls
    `forget_counters` whenever another may have written meanwhile.
    """

    async def open(self) -> None:
        """Connect and create indexes; idempotent."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """Whether the database answers now (for /readyz)."""

    def forget_counters(self) -> None:
        """Forget the seq and rev counters held in memory since they were read (the one writer
        hands them out between reservations): another writer may have written meanwhile."""

    async def insert_many(
        self, messages: list[ChatMessage], authors: Sequence[str | None] | None = None
    ) -> list[ChatMessage]:
        """Store in list order, skipping any whose (room, id) is stored already; `authors`, when
        given, holds each message's author identity (same length, None for unknown).

        Returns, for each input in order, the message as stored (with its rev): the earlier one,
        unchanged, for a repeat.
        """

    async def insert_new(
        self, messages: list[ChatMessage], authors: Sequence[str | None] | None = None
    ) -> Inserted:
        """`insert_many`, also saying which inputs this call stored: what history's read index
        counts (a repeat must not be counted twice)."""

    async def get(self, room: str, message_id: str) -> ChatMessage | None: ...

    async def newest(self, room: str, limit: int) -> list[ChatMessage]:
        """The newest `limit` messages of the room, oldest first."""

    async def after(self, room: str, message_id: str, limit: int) -> list[ChatMessage] | None:
        """Up to `limit` messages stored after `message_id`, oldest first; None if it is unknown."""

    async def before(
        self, room: str, message_id: str | None, limit: int
    ) -> list[ChatMessage] | None:
        """Up to `limit` messages stored before `message_id` (or the newest when None), oldest
        first; None if `message_id` is unknown."""

    async def since_rev(self, room: str, rev: int, limit: int) -> list[ChatMessage]:
        """Up to `limit` messages whose rev is above `rev`, in rev order (the caller asks one
        more than it sends, to know whether everything fitted)."""

    async def edit(
        self,
        room: str,
        message_id: str,
        *,
        author: str,
        username: str,
        body: str,
        at: int,
        rev: int,
    ) -> ChatMessage:
        """A new body, `edited` = `at`; only by the author."""

    async def delete(
        self,
        room: str,
        message_id: str,
        *,
        author: str,
        username: str,
        moderator: bool = False,
        rev: int,
    ) -> ChatMessage:
        """Make the message a tombstone (body "", reactions dropped); by the author or a
        moderator. Deleting a tombstone again returns it as it is."""

    async def react(
        self,
        room: str,
        message_id: str,
        *,
        username: str,
        emoji: str,
        add: bool,
        rev: int,
        max_distinct: int = MAX_DISTINCT_REACTIONS,
    ) -> ChatMessage:
        """Add or remove `username` under `emoji`; at most `max_distinct` emoji per message."""

    async def mark_read(self, room: str, reader: str, message_id: str) -> str:
        """Move the reader's marker forward to `message_id` (by stored order; never back).
        Returns the marker's id afterwards; `not_found` for an id the room does not hold."""

    async def read_state(self, room: str, reader: str, username: str | None) -> ReadState:
        """The reader's marker and the count of messages after it (all of the room without a
        marker) by users other than `username`, not deleted, at most `UNREAD_CAP`."""

    async def read_tail(self, room: str, limit: int) -> ReadTail:
        """Every marker of the room and its newest `limit` messages (`ReadTail`), in a few
        reads: enough to answer its readers' read states without asking again."""


# What both stores judge alike: pure functions of the stored message ---------------------------
def next_rev(proposed: int, room_max: int) -> int:
    """The rev a change gets: the proposal, raised above everything the room holds."""
    return max(proposed, room_max + 1)


def _is_author(stored: ChatMessage, stored_author: str | None, author: str, username: str) -> bool:
    if stored_author:
        return stored_author == author
    return stored.username == username


def edited(
    stored: ChatMessage,
    stored_author: str | None,
    *,
    author: str,
    username: str,
    body: str,
    at: int,
) -> ChatMessage | None:
    """The message with its new body (rev not yet set), None when nothing changes."""
    if stored.deleted:
        raise ProtocolError("not_found", f"message {stored.id!r} was deleted")
    if not _is_author(stored, stored_author, author, username):
        raise ProtocolError("forbidden", "only the author may edit a message")
    if stored.body == body:
        return None
    return stored.model_copy(update={"body": body, "edited": at})


def deleted(
    stored: ChatMessage,
    stored_author: str | None,
    *,
    author: str,
    username: str,
    moderator: bool,
) -> ChatMessage | None:
    """The tombstone (rev not yet set), None when the message is one already."""
    if not moderator and not _is_author(stored, stored_author, author, username):
        raise ProtocolError("forbidden", "only the author or a moderator may delete a message")
    if stored.deleted:
        return None
    return stored.model_copy(update={"deleted": True, "body": "", "reactions": None})


def reacted(
    stored: ChatMessage, *, username: str, emoji: str, add: bool, max_distinct: int
) -> ChatMessage | None:
    """The message with `username` added under (or removed from) `emoji`, rev not yet set;
    None when nothing changes (already there, or not there to remove)."""
    if stored.deleted:
        raise ProtocolError("not_found", f"message {stored.id!r} was deleted")
    reactions = {e: list(users) for e, users in (stored.reactions or {}).items()}
    users = reactions.get(emoji, [])
    if add == (username in users):
        return None
    if add:
        if emoji not in reactions and len(reactions) >= max_distinct:
            raise ProtocolError("invalid", f"at most {max_distinct} distinct reactions a message")
        reactions[emoji] = sorted([*users, username])
    else:
        users = [u for u in users if u != username]
        if users:
            reactions[emoji] = users
        else:
            del reactions[emoji]
    return stored.model_copy(update={"reactions": reactions or None})


def not_found(room: str, message_id: str) -> ProtocolError:
    return ProtocolError("not_found", f"no message {message_id!r} in room {room!r}")


@dataclass(frozen=True, slots=True)
class RoomMember:
    username: str
    session_hash: str


@dataclass(frozen=True, slots=True)
class PrivateRoom:
    room: str
    members: tuple[RoomMember, RoomMember]

    def admits(self, username: str, session_hash: str | None) -> bool:
        return any(m.username == username and m.session_hash == session_hash for m in self.members)

    def usernames(self) -> set[str]:
        return {m.username for m in self.members}


@dataclass(frozen=True, slots=True)
class NameReservation:
    """A username kept for its owner after its last connection closed (PROTOCOL.md 2.2): a
    join of the same `key` (roomcast.shared.names.username_key) under another session is
    refused until `expires` (seconds since the epoch: it must mean the same on every host)."""

    key: str
    username: str
    session_hash: str
    expires: float

    def holds(self, now: float) -> bool:
        return now < self.expires


class RoomStore(Protocol):
    """Private rooms and their two members, name reservations, and each room's moderation
    (owner, mutes, bans: roomcast.shared.moderation); they outlive every process.

    A reservation is one per name key: reserving a key again replaces it. Reservations end by
    themselves (`expires`); `purge_reservations` removes the ended ones, so the store holds at
    most the names that were in use during the last grace period.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    async def get_private(self, room: str) -> PrivateRoom | None: ...

    async def make_private(self, room: str, members: tuple[RoomMember, RoomMember]) -> PrivateRoom:
        """Make the room private to the pair unless it already is private: returns what is stored
        (the existing room when another pair owns it, so the caller can refuse)."""

    async def reserve_name(self, reservation: NameReservation) -> None:
        """Keep `reservation.key` for its session until it expires (replacing any earlier)."""

    async def get_reservation(self, key: str, now: float) -> NameReservation | None:
        """The reservation of `key` still in force at `now`, if any."""

    async def reservations(self, now: float, limit: int) -> list[NameReservation]:
        """The reservations in force at `now`, at most `limit` of them, in one query: what a
        presence replica loads when it becomes active, so a fresh name needs no read (a
        result of `limit` entries may lack some)."""

    async def purge_reservations(self, now: float) -> int:
        """Forget the reservations that ended before `now`; returns how many."""

    # moderation (2.4): each change returns the room's state after it, `version` one higher;
    # a change that changes nothing returns the state as it is
    async def get_moderation(self, room: str) -> RoomModeration:
        """The room's owner, mutes and bans (version 0 and nothing else for a room without)."""

    async def claim_owner(self, room: str, owner: RoomOwner) -> RoomModeration:
        """Make `owner` the room's owner unless it has one: the first claim wins."""

    async def add_sanction(
        self, room: str, kind: SanctionKind, sanction: Sanction, now: float
    ) -> RoomModeration:
        """Mute or ban a user (replacing that user's earlier one of the kind), dropping mutes
        that ended before `now`; `invalid` past `MAX_SANCTIONS` of a kind."""

    async def lift_sanction(self, room: str, kind: SanctionKind, key: str) -> RoomModeration:
        """Unmute or unban the user of `key`."""


# What both stores judge alike: pure functions of a room's moderation state -------------------
def owned(state: RoomModeration, owner: RoomOwner) -> RoomModeration | None:
    """The state with its first owner, None when it has one."""
    return None if state.owner is not None else state.model_copy(update={"owner": owner})


def sanctioned(
    state: RoomModeration, kind: SanctionKind, sanction: Sanction, now: float
) -> RoomModeration:
    field = "mutes" if kind == "mute" else "bans"
    kept = [
        s
        for s in getattr(state, field)
        if s.key != sanction.key and (s.until is None or s.until > now)
    ]
    if len(kept) >= MAX_SANCTIONS:
        raise ProtocolError(
            "invalid", f"room {state.room!r} holds {MAX_SANCTIONS} {field}: lift some"
        )
    return state.model_copy(update={field: (*kept, sanction)})


def lifted(state: RoomModeration, kind: SanctionKind, key: str) -> RoomModeration | None:
    """The state without the user's mute or ban, None when there is none to lift."""
    field = "mutes" if kind == "mute" else "bans"
    current: tuple[Sanction, ...] = getattr(state, field)
    kept = tuple(s for s in current if s.key != key)
    return None if len(kept) == len(current) else state.model_copy(update={field: kept})
