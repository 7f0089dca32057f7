"""What the gateway asks presence, over the bus: one method per question.

Each call is bounded by the request timeout; presence not answering raises
`BusUnavailableError` (a `BusTimeoutError`), a refusal raises its `ProtocolError`.

Joins are batched (`JoinBatcher`): in a join storm, one request carries every join this
gateway issued within one turn of the event loop, or while its previous batches were in
flight, and presence answers each in one reply. Each join keeps its own deadline and its own
answer. A presence that does not take batches (an older one, in a rolling upgrade) is asked one
join at a time: joins go singly until a reply says batches are taken, and again after a batch
got no answer (maybe an older replica took over).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from pydantic import BaseModel

from roomcast.shared import rpc, topics
from roomcast.shared.bus import Bus, BusUnavailableError
from roomcast.shared.config import Settings
from roomcast.shared.moderation import RoomModeration

from .batching import MAX_IN_FLIGHT, TurnBatcher, Waiting


class Admission(BaseModel):
    users: list[str]
    private: bool = False
    moderation: RoomModeration | None = None  # the room's owner, mutes and bans (2.4)


class JoinBatcher(TurnBatcher[rpc.BatchedJoin]):
    """Sends joins to presence in batches (rpc.JoinBatch); see the module docstring."""

    task_name = "presence-joins"
    refusal = "presence did not answer a join"

    def __init__(
        self,
        bus: Bus,
        timeout: float,
        *,
        max_batch: int = rpc.MAX_JOIN_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(timeout, max_batch=max_batch, max_in_flight=max_in_flight, wall=wall)
        self._bus = bus

    async def join(self, request: rpc.JoinRequest) -> Any:
        """Presence's answer to one join (its admission), or the error it raised."""
        if not self.takes_batches:
            result = await rpc.call(
                self._bus, topics.presence_request("join"), request, timeout=self._timeout
            )
            if isinstance(result, dict) and result.get(rpc.BATCHES):
                self.takes_batches = True
            return result
        deadline = self.deadline()
        return await self.submit(
            rpc.BatchedJoin(**request.model_dump(), deadline=deadline), deadline
        )

    async def _ask(self, batch: list[Waiting[rpc.BatchedJoin]]) -> list[Any]:
        deadline = max(w.deadline for w in batch)
        raw = await self._bus.request(
            topics.presence_request("joins"),
            rpc.encode(rpc.JoinBatch(joins=[w.entry for w in batch])),
            timeout=max(deadline - self._wall(), 0.001),
            headers={rpc.DEADLINE_HEADER: f"{deadline:.3f}"},
        )
        return list(rpc.outcomes(raw, len(batch)))


class PresenceClient:
    def __init__(self, bus: Bus, settings: Settings, gateway: str) -> None:
        self._bus = bus
        self._settings = settings
        self._gateway = gateway
        self.joins = JoinBatcher(bus, settings.request_timeout)

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
        return Admission.model_validate(await self.joins.join(request))

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
