"""Room ownership and moderation in presence (PROTOCOL.md 2.4).

Presence owns this state because it admits every join in one ordered queue: the first join of
a public room claims its owner there, and a ban refuses later joins there, with no window in
which two gateways disagree. Changes are stored in the room store (so they outlive every
process) before they are broadcast on `moderation.<room>` with the room's whole state, which
every gateway caches (roomcast.gateway.moderation). A kick or a ban is carried out by the
gateways holding the user's connections: each makes them leave the room, and the ordinary
leave tells the room `userLeave`.

Who may: the room's owner (by identity), a moderator (a token's role, vouched for by its
gateway) and the application's backend; anyone else is refused `forbidden`. The cache is an
LRU, dropped with presence's other caches when another replica may have been active.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from prometheus_client import Counter

from roomcast.shared import rpc, topics
from roomcast.shared.bus import Bus, BusUnavailableError, Message
from roomcast.shared.models import MAIN_ROOM
from roomcast.shared.moderation import (
    ModerateReply,
    ModerateRequest,
    ModerationChange,
    ModerationQuery,
    RoomModeration,
    RoomOwner,
    Sanction,
)
from roomcast.shared.names import username_key
from roomcast.shared.store.base import RoomStore, StoreUnavailableError

from .readahead import ReadAhead

log = structlog.get_logger(__name__)
T = TypeVar("T")

MODERATION = Counter(
    "roomcast_moderation_total", "Moderation requests presence judged", ["action", "outcome"]
)
CACHE_CAP = 10_000


class RoomModerator:
    def __init__(self, bus: Bus, rooms: RoomStore, wall: Callable[[], float] = time.time) -> None:
        self._bus = bus
        self._rooms = rooms
        self._wall = wall
        self._cache: ReadAhead[str, RoomModeration] = ReadAhead(CACHE_CAP, self._read)

    def forget_cache(self) -> None:
        self._cache.clear()

    def prefetch(self, room: str) -> None:
        """Read the room's state ahead, outside presence's lock (readahead.py)."""
        self._cache.prefetch(room)

    async def state(self, room: str) -> RoomModeration:
        return await _stored(self._cache.get(room))

    async def _read(self, room: str) -> RoomModeration:
        return await self._rooms.get_moderation(room)

    async def _write(self, room: str, op: Awaitable[RoomModeration]) -> RoomModeration:
        """Store a change and cache the result; when the store failed, the change may or may
        not be stored, so the next reader asks the store."""
        try:
            state = await _stored(op)
        except rpc.RemoteError:
            self._cache.forget(room)
            raise
        self._cache.put(room, state)
        return state

    async def admit(
        self, room: str, username: str, identity: str, *, public: bool
    ) -> RoomModeration:
        """Refuse a banned user; the first joiner of a public room other than main owns it.

        Main was joined without the store before rooms had owners: with the store away it
        still is (its bans then wait for the store), so chat's front door stays open."""
        try:
            state = await self.state(room)
        except rpc.RemoteError:
            if room != MAIN_ROOM:
                raise
            log.warning("moderation of main unknown; admitted without it", username=username)
            return RoomModeration(room=room)
        if state.banned(username):
            log.info("banned user refused", room=room, username=username)
            raise rpc.RemoteError("banned", f"you are banned from room {room!r}")
        if public and room != MAIN_ROOM and state.owner is None:
            owner = RoomOwner(username=username, identity=identity)
            state = await self._write(room, self._rooms.claim_owner(room, owner))
            log.info("room owned", room=room, owner=username)
            # the joiner's gateway learns it from the reply; the others only need it for a
            # moderator's deleteChat, so a lost broadcast does not refuse the join
            await self._tell(
                ModerationChange(action="own", username=username, by=username, state=state)
            )
        return state

    async def query(self, message: Message) -> bytes:
        """`presence.moderation`: a room's state, for a gateway that has none cached."""
        req = rpc.decode(ModerationQuery, message)
        return rpc.result(await self.state(req.room))

    async def moderate(self, message: Message) -> bytes:
        """`presence.moderate`: judge, store, then tell every gateway."""
        req = rpc.decode(ModerateRequest, message)
        what = {"action": req.action, "room": req.room, "username": req.username, "by": req.by}
        try:
            reply = await self._moderate(req)
        except rpc.RemoteError as exc:
            MODERATION.labels(req.action, exc.code).inc()
            log.info("moderation refused", **what, code=exc.code, reason=exc.message)
            raise
        MODERATION.labels(req.action, "ok").inc()
        log.info("room moderated", **what, seconds=req.seconds)
        return rpc.result(reply)

    async def _moderate(self, req: ModerateRequest) -> ModerateReply:
        room, action, key = req.room, req.action, username_key(req.username)
        state = await self.state(room)
        if not (req.backend or req.moderator or state.owned_by(req.identity)):
            raise rpc.RemoteError(
                "forbidden", f"only the owner of room {room!r} or a moderator may {action} in it"
            )
        if not req.backend and key == username_key(req.by):
            raise rpc.RemoteError("invalid", f"you cannot {action} yourself")
        now = self._wall()
        if action == "mute":
            if req.seconds is None:
                raise rpc.RemoteError("invalid", "mute needs 'seconds'")
            mute = Sanction(key=key, username=req.username, until=now + req.seconds, by=req.by)
            state = await self._write(room, self._rooms.add_sanction(room, "mute", mute, now))
        elif action == "ban":
            ban = Sanction(key=key, username=req.username, by=req.by)
            state = await self._write(room, self._rooms.add_sanction(room, "ban", ban, now))
        elif action == "unmute":
            state = await self._write(room, self._rooms.lift_sanction(room, "mute", key))
        elif action == "unban":
            state = await self._write(room, self._rooms.lift_sanction(room, "ban", key))
        change = ModerationChange(action=action, username=req.username, by=req.by, state=state)
        if not await self._tell(change):
            raise rpc.RemoteError(
                "unavailable",
                "the change is stored but not every gateway heard of it; send it again",
            )
        seconds = req.seconds if action == "mute" else None
        return ModerateReply(room=room, username=req.username, seconds=seconds, state=state)

    async def _tell(self, change: ModerationChange) -> bool:
        """Broadcast to every gateway; whether the broker took it (the state is stored already,
        so sending the request again is harmless)."""
        try:
            await self._bus.publish(topics.moderation_change(change.state.room), rpc.encode(change))
        except BusUnavailableError as exc:
            log.warning("moderation change not broadcast", room=change.state.room, reason=str(exc))
            return False
        return True


async def _stored(op: Awaitable[T]) -> T:
    try:
        return await op
    except StoreUnavailableError as exc:
        raise rpc.RemoteError("unavailable", "the room store is unavailable") from exc
