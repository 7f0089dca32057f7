"""Room moderation as every service sees it (PROTOCOL.md 2.4): one room's owner, mutes and
bans, the request that changes them and the change every gateway hears of.

Presence owns the state (it admits joins, so it claims owners and refuses banned users in the
same ordered queue) and keeps it in the room store; each change is broadcast on
`moderation.<room>` with the room's whole state, so a gateway's cache is right after any one
change it hears. `version` grows with every change of a room: a cache keeps the larger one, so
a join reply and a broadcast that cross cannot roll it back.

Mutes and bans name a user by `username_key` (case and look-alikes folded, 2.2), so `Bob` and
`bob` are one user here as they are for `username_taken`. The owner is bound to an identity
(the session hash, or what a token makes of it), as private rooms are.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from roomcast.shared.names import username_key

Action = Literal["mute", "unmute", "kick", "ban", "unban"]
SanctionKind = Literal["mute", "ban"]

MAX_MUTE_SECONDS = 366 * 86400
MAX_SANCTIONS = 1000  # mutes, or bans, one room may hold (a refusal past it, not a growing doc)
BACKEND = "backend"  # the `by` of what the application's backend does over the HTTP API


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoomOwner(_Frozen):
    username: str
    identity: str


class Sanction(_Frozen):
    """A mute (until `until`, seconds since the epoch) or a ban (`until` None) of one user;
    `by` who did it (the `by` of a `kicked` that a gateway carries out later)."""

    key: str
    username: str
    until: float | None = None
    by: str = ""


class RoomModeration(_Frozen):
    room: str
    version: int = 0
    owner: RoomOwner | None = None
    mutes: tuple[Sanction, ...] = ()
    bans: tuple[Sanction, ...] = ()

    def muted_until(self, username: str, now: float) -> float | None:
        """When the user's mute ends, if one is in force at `now`."""
        if not self.mutes:  # most rooms: no name folded on the chat path
            return None
        key = username_key(username)
        for mute in self.mutes:
            if mute.key == key and mute.until is not None and mute.until > now:
                return mute.until
        return None

    def banned(self, username: str) -> bool:
        if not self.bans:
            return False
        key = username_key(username)
        return any(ban.key == key for ban in self.bans)

    def owned_by(self, identity: str | None) -> bool:
        return self.owner is not None and identity is not None and self.owner.identity == identity


class ModerateRequest(_Frozen):
    """`presence.moderate`: `by` is the actor's username (or `BACKEND`), `identity` its session
    hash; `moderator` says a verified token gave it the moderator role (gateways are trusted
    to say so); `backend` is the application's backend, allowed everything."""

    room: str
    action: Action
    username: str
    seconds: int | None = Field(None, ge=1, le=MAX_MUTE_SECONDS)
    by: str
    identity: str | None = None
    moderator: bool = False
    backend: bool = False


class ModerateReply(_Frozen):
    """What presence answers a `ModerateRequest`: the ack's fields, and the room's state after
    it, so the asking gateway holds the change at once (its broadcast reaches the others)."""

    room: str
    username: str
    seconds: int | None = None
    state: RoomModeration

    def ack(self) -> dict[str, object]:
        return self.model_dump(exclude={"state"}, exclude_none=True)


class ModerationQuery(_Frozen):
    """`presence.moderation`: a room's state, for a gateway that has none cached."""

    room: str


class ModerationChange(_Frozen):
    """The broadcast on `moderation.<room>` after each change (and on an owner's claim)."""

    action: Action | Literal["own"]
    username: str
    by: str
    state: RoomModeration
