"""Room moderation on a gateway (PROTOCOL.md 2.4): a cache of each room's owner, mutes and
bans, kept right by presence's broadcasts, and what those broadcasts make this gateway do.

- The cache is filled by a join's reply (presence sends the room's state with its admission),
  by every change broadcast on `moderation.<room>` (each carries the room's whole state), and
  on first use by asking presence. A state replaces a cached one only if its `version` is not
  older, so a join reply and a broadcast that cross do not roll it back. After a delivery gap
  the cache is dropped and refilled on use.
- A kick or a ban makes each local connection of that user leave the room and get `kicked`;
  presence hears the leave and tells the room `userLeave`.
- `disconnect.<username>` (the backend API) closes each local connection of the user (4003).
- Mute checks fail open: a muted user whose gateway cannot reach presence may chat until it
  can, rather than every user of a room losing chat while presence is away.
The subscription is the gateway's second private queue, bound to every room's changes: they
are rare, and a cache of a room this gateway does not serve yet may be filled from them.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import structlog
from prometheus_client import Counter
from pydantic import ValidationError

from roomcast.shared import rpc, topics
from roomcast.shared.bus import BusUnavailableError, Message, Subscription
from roomcast.shared.moderation import (
    BACKEND,
    Action,
    ModerateReply,
    ModerateRequest,
    ModerationChange,
    ModerationQuery,
    RoomModeration,
)
from roomcast.shared.names import username_key

from .connection import Connection
from .logthrottle import LogThrottle
from .protocol import ProtocolError, event_frame

if TYPE_CHECKING:
    from .gateway import ChatGateway

log = structlog.get_logger(__name__)

KICKED = Counter(
    "roomcast_gateway_kicked_total", "Connections made to leave a room by a kick or ban"
)
DISCONNECTED = Counter(
    "roomcast_gateway_backend_disconnects_total", "Connections closed (4003) by the backend API"
)
CLOSE_DISCONNECTED = 4003
CACHE_CAP = 10_000  # rooms (client input: bounded)
_QUERY_TIMEOUT = 1.0
_QUERIES_OFF_SECONDS = 5.0  # after presence did not answer, chat does not wait for it again


def is_moderator(conn: Connection) -> bool:
    """A token's `moderator` role moderates every room; anonymous users have no roles."""
    return conn.identity is not None and conn.identity.is_moderator


class Moderation:
    def __init__(self, gw: ChatGateway, clock: Callable[[], float] = time.monotonic) -> None:
        self._gw = gw
        self._clock = clock
        self._states: OrderedDict[str, RoomModeration] = OrderedDict()
        self._subscription: Subscription | None = None
        self._queries_off_until = 0.0
        self._refusals = LogThrottle()  # a muted user who keeps typing: a sample of the lines

    async def start(self) -> None:
        self._subscription = await self._gw.bus.subscribe(
            self._on_message, name=f"{self._gw.id}-moderation", on_gap=self._on_gap
        )
        for pattern in topics.MODERATION_PATTERNS:
            await self._subscription.bind(pattern)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()

    # the cache ------------------------------------------------------------------------------
    def learn(self, state: RoomModeration) -> RoomModeration:
        """Keep `state` unless the cache holds a newer one; returns what is kept."""
        current = self._states.get(state.room)
        if current is not None and current.version > state.version:
            self._states.move_to_end(state.room)
            return current
        self._states[state.room] = state
        self._states.move_to_end(state.room)
        if len(self._states) > CACHE_CAP:
            self._states.popitem(last=False)
        return state

    async def state(self, room: str) -> RoomModeration | None:
        """The room's state, from the cache or presence; None when presence does not answer
        (and then at once for a few seconds, so chat does not wait for it message by message)."""
        cached = self._states.get(room)
        if cached is not None:
            return cached
        if self._clock() < self._queries_off_until:
            return None
        timeout = min(_QUERY_TIMEOUT, self._gw.settings.request_timeout)
        try:
            reply = await rpc.call(
                self._gw.bus,
                topics.presence_request("moderation"),
                ModerationQuery(room=room),
                timeout=timeout,
            )
        except (BusUnavailableError, ProtocolError) as exc:
            self._queries_off_until = self._clock() + _QUERIES_OFF_SECONDS
            log.warning("moderation state unknown; not enforced", room=room, reason=str(exc))
            return None
        return self.learn(RoomModeration.model_validate(reply))

    # checks ---------------------------------------------------------------------------------
    async def refuse_muted(self, conn: Connection, room: str) -> None:
        """Raise `muted` while the connection's user is muted in the room."""
        state = await self.state(room)
        if state is None or conn.username is None:
            return
        now = time.time()
        until = state.muted_until(conn.username, now)
        if until is not None:
            left_out = self._refusals.allow("muted")
            if left_out is not None:
                log.info(
                    "muted user refused",
                    room=room,
                    username=conn.username,
                    conn=conn.id,
                    left_out=left_out,
                )
            raise ProtocolError(
                "muted", f"you are muted in room {room!r} for {math.ceil(until - now)} more seconds"
            )

    async def moderates(self, conn: Connection, room: str) -> bool:
        """Whether the connection's user may moderate the room: a moderator or its owner."""
        if is_moderator(conn):
            return True
        state = await self.state(room)
        return state is not None and state.owned_by(conn.session_hash)

    # actions --------------------------------------------------------------------------------
    async def act(
        self, conn: Connection, action: Action, room: str, username: str, seconds: int | None
    ) -> dict[str, object]:
        """A client's moderation event: presence judges it (owner or moderator)."""
        if conn.username is None:
            raise ProtocolError("not_joined", f"join a room before you {action} anyone")
        request = ModerateRequest(
            room=room,
            action=action,
            username=username,
            seconds=seconds,
            by=conn.username,
            identity=conn.session_hash,  # a token's subject key, or the session's hash
            moderator=is_moderator(conn),
        )
        return await self._ask(request)

    async def act_for_backend(
        self, action: Action, room: str, username: str, seconds: int | None = None
    ) -> dict[str, object]:
        """The application's backend: allowed everything (it proved the API key)."""
        request = ModerateRequest(
            room=room, action=action, username=username, seconds=seconds, by=BACKEND, backend=True
        )
        return await self._ask(request)

    async def disconnect_everywhere(self, username: str) -> None:
        """Close every connection of the user on every gateway (this one included)."""
        await self._gw.bus.publish(topics.disconnect_user(username), b"")

    async def _ask(self, request: ModerateRequest) -> dict[str, object]:
        """Presence's answer; its state is held here at once (read your own writes)."""
        result = await rpc.call(
            self._gw.bus,
            topics.presence_request("moderate"),
            request,
            timeout=self._gw.settings.request_timeout,
        )
        reply = ModerateReply.model_validate(result)
        await self._enforce(self.learn(reply.state))
        return reply.ack()

    # what the bus brings ------------------------------------------------------------------
    async def _on_message(self, message: Message) -> None:
        route = topics.parse(message.routing_key)
        if route.kind == "disconnect":
            self._disconnect(route.name)
            return
        if route.kind != "moderation":
            return
        try:
            change = ModerationChange.model_validate_json(message.body)
        except ValidationError as exc:
            log.warning(
                "malformed moderation change dropped", key=message.routing_key, reason=str(exc)
            )
            return
        state = self.learn(change.state)
        if change.action == "kick":
            await self._kick(state.room, {username_key(change.username): change.by})
        await self._enforce(state)  # a ban, or one whose broadcast was missed

    async def _enforce(self, state: RoomModeration) -> None:
        """Kick the local connections of the room's banned users (each by whoever banned)."""
        if state.bans:
            await self._kick(state.room, {ban.key: ban.by or BACKEND for ban in state.bans})

    async def _kick(self, room: str, kicked: Mapping[str, str]) -> None:
        """Make each local connection of the users whose key `kicked` holds leave the room;
        they get `kicked` with what it maps the key to as `by`."""
        gw = self._gw
        for member in gw.membership.members(room):
            conn = member.conn
            by = kicked.get(username_key(conn.username)) if conn.username is not None else None
            if by is None:
                continue
            await gw.membership.leave(member)
            conn.push(event_frame("kicked", {"room": room, "by": by}, room=room), "kicked")
            if member.admitted:
                await gw.presence.forget(conn.id, room)
            KICKED.inc()
            log.info("kicked from room", room=room, username=conn.username, by=by, conn=conn.id)

    def _disconnect(self, username: str) -> None:
        key = username_key(username)
        for conn in list(self._gw.membership.connections):
            if conn.username is not None and username_key(conn.username) == key:
                conn.close_soon(CLOSE_DISCONNECTED)
                DISCONNECTED.inc()
                log.info("disconnected by the backend", username=conn.username, conn=conn.id)

    async def _on_gap(self) -> None:
        """Changes may have been missed: forget them all, then ask again for the rooms served
        here and carry out any ban missed (a missed kick is not repeated); other rooms are
        asked again on use."""
        self._states.clear()
        for room in self._gw.membership.rooms():
            state = await self.state(room)
            if state is not None:
                await self._enforce(state)
