"""The presence service: membership, `activeUsers`/`userJoin`/`userLeave`, invitations and
private rooms.

It consumes one single-active-consumer queue: one replica works, the others stand by and take
over with an empty state that the gateways' heartbeats (each a full roster) rebuild within one
heartbeat period. Requests are handled one at a time, in queue order, so the state needs no
locks beyond one. Private rooms live in the room store, so they outlive every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from prometheus_client import Counter, Gauge

from roomcast.shared import rpc, topics
from roomcast.shared.bus import Bus, Consumer, Message, RejectMessage
from roomcast.shared.config import Settings
from roomcast.shared.frames import encode_event
from roomcast.shared.models import MAIN_ROOM
from roomcast.shared.store.base import PrivateRoom, RoomMember, RoomStore, StoreUnavailableError

from .announcer import Announcer
from .state import PresenceState

log = structlog.get_logger(__name__)
T = TypeVar("T")

OPS = Counter("roomcast_presence_ops_total", "Presence requests handled", ["op", "outcome"])
USERS = Gauge("roomcast_presence_connections", "Connections presence knows of")


class PresenceService:
    def __init__(
        self,
        bus: Bus,
        rooms: RoomStore,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._rooms = rooms
        self._settings = settings
        self._clock = clock
        self.state = PresenceState()
        self._private: dict[str, PrivateRoom | None] = {}
        self._lock = asyncio.Lock()
        self._announcer = Announcer(bus, self.state.users)
        self._announced: asyncio.Future[None] | None = None
        self._consumer: Consumer | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._handlers = {
            "join": self._join,
            "leave": self._leave,
            "disconnect": self._disconnect,
            "invite": self._invite,
            "users": self._users,
            "heartbeat": self._heartbeat,
            "gone": self._gone,
        }

    async def start(self) -> None:
        self._consumer = await self._bus.consume(
            topics.presence_queue(self._settings.exchange),
            topics.PRESENCE_PATTERNS,
            self._handle,
            prefetch=64,
            single_active=True,
        )
        self._announcer.start()
        self._reaper = asyncio.create_task(self._reap(), name="presence-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self._consumer is not None:
            await self._consumer.close()
        await self._announcer.stop()

    async def _handle(self, message: Message) -> None:
        op = message.routing_key.rpartition(".")[2]
        handler = self._handlers.get(op)
        if handler is None:
            raise RejectMessage(f"unknown presence op {op!r}")
        async with self._lock:
            self._announced = None
            try:
                reply = await handler(message)
            except rpc.RemoteError as exc:
                OPS.labels(op, exc.code).inc()
                reply = rpc.refusal(exc.code, exc.message)
            else:
                OPS.labels(op, "ok").inc()
            USERS.set(len(self.state.conns))
            announced = self._announced
        if announced is not None:
            # a joiner's gateway must have its room's events before the reply: they are then
            # held and released right after its msgHistory, as the protocol orders them
            await announced
        if reply is not None:
            await self._bus.reply(message, reply)

    # requests ------------------------------------------------------------------------------
    async def _join(self, message: Message) -> bytes:
        req = rpc.decode(rpc.JoinRequest, message)
        now = self._clock()
        self.state.touch(req.gateway, now)
        holders = self.state.session_hashes(req.username, except_conn=req.conn)
        if holders and holders != {req.session_hash}:
            raise rpc.RemoteError(
                "username_taken", f"username {req.username!r} is in use by someone else"
            )
        private = await self._private_room(req.room)
        if private is not None and not private.admits(req.username, req.session_hash):
            raise rpc.RemoteError("room_private", f"room {req.room!r} is private")
        changes = self.state.join(
            req.gateway, req.conn, req.username, req.session_hash, req.room, now
        )
        self._announced = self._announcer.announce(changes)
        return rpc.result({"users": self.state.users(req.room), "private": private is not None})

    async def _leave(self, message: Message) -> bytes:
        req = rpc.decode(rpc.LeaveRequest, message)
        self._announced = self._announcer.announce(self.state.leave(req.conn, req.room))
        return rpc.result()

    async def _disconnect(self, message: Message) -> bytes:
        req = rpc.decode(rpc.DisconnectRequest, message)
        self._announced = self._announcer.announce(self.state.disconnect(req.conn))
        return rpc.result()

    async def _invite(self, message: Message) -> bytes:
        req = rpc.decode(rpc.InviteRequest, message)
        room, inviter, invitee = req.room, req.username, req.username2
        if invitee == inviter:
            raise rpc.RemoteError("invalid", "you cannot invite yourself")
        if room == MAIN_ROOM:
            raise rpc.RemoteError("room_exists", f"room {room!r} is public")
        if not self.state.in_room(req.conn, room):
            raise rpc.RemoteError("not_joined", f"join room {room!r} before inviting to it")
        private = await self._private_room(room)
        pair = {inviter, invitee}
        if private is not None and (
            private.usernames() != pair or not private.admits(inviter, req.session_hash)
        ):
            raise rpc.RemoteError("room_private", f"room {room!r} is private to another pair")
        invitee_sessions = self.state.session_hashes(invitee)
        if not invitee_sessions:
            raise rpc.RemoteError("user_offline", f"{invitee!r} is not online")
        if private is None:
            if self.state.others_in(room, inviter, invitee):
                raise rpc.RemoteError("room_exists", f"room {room!r} already has other members")
            members = (
                RoomMember(inviter, req.session_hash),
                RoomMember(invitee, sorted(invitee_sessions)[0]),
            )
            stored = await self._store(self._rooms.make_private(room, members))
            self._private[room] = stored
            if stored.members != members and stored.usernames() != pair:
                raise rpc.RemoteError("room_private", f"room {room!r} is private to another pair")
        invitation = {
            "username": inviter,
            "username2": invitee,
            "room": room,
            "url": f"/?room={room}",
        }
        await self._bus.publish(
            topics.user_event(invitee, "newRoom"), encode_event("newRoom", invitation).encode()
        )
        return rpc.result(invitation)

    async def _users(self, message: Message) -> bytes:
        req = rpc.decode(rpc.UsersRequest, message)
        private = await self._private_room(req.room)
        allowed = private is None or (
            req.username is not None and private.admits(req.username, req.session_hash)
        )
        users = self.state.users(req.room) if allowed else []
        return rpc.result(rpc.UsersReply(private=private is not None, allowed=allowed, users=users))

    async def _heartbeat(self, message: Message) -> None:
        beat = rpc.decode(rpc.Heartbeat, message)
        grace = self._settings.heartbeat_interval
        self._announced = self._announcer.announce(self.state.reconcile(beat, self._clock(), grace))

    async def _gone(self, message: Message) -> None:
        req = rpc.decode(rpc.GatewayGone, message)
        self._announced = self._announcer.announce(self.state.drop_gateway(req.gateway))

    # helpers -------------------------------------------------------------------------------
    async def _private_room(self, room: str) -> PrivateRoom | None:
        """Private rooms never become public again, and only the active replica makes them, so
        what it has read stays true while it is active."""
        if room == MAIN_ROOM:
            return None
        if room not in self._private or self._private[room] is None:
            self._private[room] = await self._store(self._rooms.get_private(room))
        return self._private[room]

    async def _store(self, op: Awaitable[T]) -> T:
        try:
            return await op
        except StoreUnavailableError as exc:
            raise rpc.RemoteError("unavailable", "the room store is unavailable") from exc

    async def _reap(self) -> None:
        """Forget gateways that stopped sending heartbeats (killed without a word)."""
        period = self._settings.heartbeat_interval / 2
        while True:
            await asyncio.sleep(period)
            async with self._lock:
                for gateway in self.state.expired(self._clock(), self._settings.gateway_expiry):
                    log.warning("gateway silent; forgetting its connections", gateway=gateway)
                    self._announcer.announce(self.state.drop_gateway(gateway))
