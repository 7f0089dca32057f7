"""What the gateway asks presence and history, over the bus: one method per question.

Each call is bounded by the request timeout; a service that does not answer raises
`BusUnavailableError` (a `BusTimeoutError`), a refusal raises the service's `ProtocolError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress

import structlog
from pydantic import BaseModel

from roomcast.shared import rpc, topics
from roomcast.shared.bus import Bus, BusUnavailableError
from roomcast.shared.config import Settings
from roomcast.shared.models import ChatMessage
from roomcast.shared.moderation import RoomModeration

log = structlog.get_logger(__name__)

_LOOKUP_TIMEOUT = 1.0
_LOOKUPS_OFF_SECONDS = 5.0


class Admission(BaseModel):
    users: list[str]
    private: bool = False
    moderation: RoomModeration | None = None  # the room's owner, mutes and bans (2.4)


class PresenceClient:
    def __init__(self, bus: Bus, settings: Settings, gateway: str) -> None:
        self._bus = bus
        self._settings = settings
        self._gateway = gateway

    async def join(self, conn: str, username: str, session_hash: str, room: str) -> Admission:
        """Admit the connection to the room: the room's users (the joiner's snapshot), and
        whether the room is private."""
        request = rpc.JoinRequest(
            gateway=self._gateway,
            conn=conn,
            username=username,
            room=room,
            session_hash=session_hash,
        )
        return Admission.model_validate(await self._call("join", request))

    async def leave(self, conn: str, room: str, username: str | None = None) -> None:
        request = rpc.LeaveRequest(gateway=self._gateway, conn=conn, room=room, username=username)
        await self._call("leave", request)

    async def forget(self, conn: str, room: str) -> None:
        """Best effort, no answer awaited: undo a join whose answer never came (presence may
        have admitted it; the heartbeat roster corrects it otherwise)."""
        with suppress(BusUnavailableError):
            request = rpc.LeaveRequest(gateway=self._gateway, conn=conn, room=room)
            await self._bus.publish(topics.presence_request("leave"), rpc.encode(request))

    async def disconnect(
        self,
        conn: str,
        username: str | None = None,
        session_hash: str | None = None,
        rooms: list[str] | None = None,
    ) -> None:
        """`username`, `session_hash`, `rooms`: what presence announces and reserves even when
        it took over after the connection joined."""
        request = rpc.DisconnectRequest(
            gateway=self._gateway,
            conn=conn,
            username=username,
            session_hash=session_hash,
            rooms=rooms or [],
        )
        await self._bus.publish(topics.presence_request("disconnect"), rpc.encode(request))

    async def invite(
        self, conn: str, username: str, session_hash: str, username2: str, room: str
    ) -> dict[str, object]:
        request = rpc.InviteRequest(
            gateway=self._gateway,
            conn=conn,
            username=username,
            session_hash=session_hash,
            username2=username2,
            room=room,
        )
        result = await self._call("invite", request)
        return dict(result) if isinstance(result, dict) else {}

    async def users(
        self, room: str, username: str | None, session_hash: str | None, *, backend: bool = False
    ) -> rpc.UsersReply:
        """`backend`: the application's backend asks (any room, private ones too)."""
        request = rpc.UsersRequest(
            room=room, username=username, session_hash=session_hash, backend=backend
        )
        return rpc.UsersReply.model_validate(await self._call("users", request))

    async def heartbeat(self, roster: list[dict[str, object]]) -> None:
        beat = rpc.encode_raw({"gateway": self._gateway, "connections": roster})
        await self._bus.publish(topics.presence_request("heartbeat"), beat)

    async def gone(self) -> None:
        gone = rpc.GatewayGone(gateway=self._gateway)
        await self._bus.publish(topics.presence_request("gone"), rpc.encode(gone))

    async def _call(self, op: str, request: rpc.Wire) -> object:
        return await rpc.call(
            self._bus,
            topics.presence_request(op),
            request,
            timeout=self._settings.request_timeout,
        )


class HistoryClient:
    """Reads go through the history service's ordered queue: each is answered after every
    message published before it is stored."""

    def __init__(self, bus: Bus, settings: Settings, clock: Callable[[], float] = time.monotonic):
        self._bus = bus
        self._settings = settings
        self._clock = clock
        self._lookups_off_until = 0.0

    async def recent(
        self,
        room: str,
        limit: int | None = None,
        *,
        reader: str | None = None,
        username: str | None = None,
    ) -> rpc.HistoryReply:
        """The newest messages; with `reader`, also that reader's read state."""
        query = rpc.HistoryQuery(
            op="recent",
            limit=limit or self._settings.history_default,
            reader=reader,
            username=username,
        )
        return await self._ask(room, query)

    async def since(
        self, room: str, message_id: str, reader: str | None = None, username: str | None = None
    ) -> rpc.HistoryReply:
        query = rpc.HistoryQuery(
            op="since",
            since=message_id,
            limit=self._settings.recovery_max,
            reader=reader,
            username=username,
        )
        return await self._ask(room, query)

    async def since_rev(
        self, room: str, rev: int, reader: str | None = None, username: str | None = None
    ) -> rpc.HistoryReply:
        """Every message whose rev is above `rev` (new and changed), in rev order."""
        query = rpc.HistoryQuery(
            op="since_rev",
            since_rev=rev,
            limit=self._settings.recovery_max,
            reader=reader,
            username=username,
        )
        return await self._ask(room, query)

    async def before(self, room: str, message_id: str | None, limit: int) -> rpc.HistoryReply:
        return await self._ask(room, rpc.HistoryQuery(op="before", before=message_id, limit=limit))

    async def change(self, room: str, change: rpc.ChangeRequest) -> dict[str, object]:
        """Have history judge and apply a change (edit, delete, react, markRead)."""
        result = await rpc.call(
            self._bus, topics.history_request(room), change, timeout=self._settings.request_timeout
        )
        return dict(result) if isinstance(result, dict) else {}

    async def lookup(self, room: str, message_id: str) -> ChatMessage | None:
        """The stored message with this id in the room, if there is one.

        Asked on the way of a chat message, so it waits less than other reads, and after a
        timeout it fails at once (`BusUnavailableError`) for a while instead of making every
        message wait for a history that is down."""
        if self._clock() < self._lookups_off_until:
            raise BusUnavailableError("history did not answer recently; not asked")
        query = rpc.HistoryQuery(op="lookup", id=message_id, limit=1)
        timeout = min(_LOOKUP_TIMEOUT, self._settings.request_timeout)
        try:
            reply = await self._ask(room, query, timeout)
        except BusUnavailableError:
            self._lookups_off_until = self._clock() + _LOOKUPS_OFF_SECONDS
            log.warning("history does not answer id lookups; chat goes on without them")
            raise
        return reply.messages[0] if reply.messages else None

    async def _ask(
        self, room: str, query: rpc.HistoryQuery, timeout: float | None = None
    ) -> rpc.HistoryReply:
        result = await rpc.call(
            self._bus,
            topics.history_request(room),
            query,
            timeout=timeout or self._settings.request_timeout,
        )
        return rpc.HistoryReply.model_validate(result)
