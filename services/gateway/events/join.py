"""`userJoin`: the one event that involves every service, in the order PROTOCOL.md gives.

1. The room is bound first, so every event published from then on reaches this gateway; the
   member holds them back.
2. Presence (admission: names, private rooms) and history (the room's messages) are asked
   together. Presence refusing or not answering refuses the join (`unavailable` when it is
   down), and the join leaves no trace. History not answering does not: the joiner gets
   `msgHistory` `[]` and an ack with `"history": false` (2.2).
3. `msgHistory`, then the `activeUsers` snapshot from presence's answer (2.1), then the held
   events less the messages already in the history: no gap, no repeat. The ack carries the
   reader's `lastRead` and `unread` (2.3).
A repeated join of a room the connection is in changes nothing and is acknowledged
`"already": true` (2.1).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from roomcast.shared import rpc
from roomcast.shared.bus import BusUnavailableError
from roomcast.shared.sessions import session_hash

from ..connection import Connection
from ..protocol import JoinData, ProtocolError, event_frame
from .guards import own, within

if TYPE_CHECKING:
    from ..gateway import ChatGateway

log = structlog.get_logger(__name__)


async def handle(gw: ChatGateway, conn: Connection, data: JoinData) -> dict[str, object]:
    own(conn, data.username)
    session = _session_for(gw, conn, data)
    room = data.room
    if gw.membership.member(conn, room) is not None:
        return {"room": room, "session": session, "already": True}
    within(conn.limiters.joins, gw.settings.join_per_second, "joins and leaves")
    if len(gw.membership.rooms_of(conn)) >= gw.settings.max_rooms_per_connection:
        raise ProtocolError(
            "invalid",
            f"a connection may be in at most {gw.settings.max_rooms_per_connection} rooms; "
            "leave one first",
        )
    hashed = session_hash(session)
    member = await gw.membership.enter(conn, room)
    reading = asyncio.ensure_future(_history(gw, room, data, hashed))
    try:
        admission = await gw.presence.join(conn.id, data.username, hashed, room)
    except BaseException as exc:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        await gw.membership.leave(member)
        if isinstance(exc, BusUnavailableError):
            await gw.presence.forget(conn.id, room)
        raise
    member.admitted, member.private = True, admission.private
    if conn.username is None:
        conn.username, conn.session, conn.session_hash = data.username, session, hashed
        await gw.membership.identify(conn, data.username)
    history = await reading
    messages = [m.wire() for m in history.messages] if history is not None else []
    conn.push(event_frame("msgHistory", messages, room=room), "msgHistory")
    conn.push(event_frame("activeUsers", admission.users, room=room), "activeUsers")
    if history is not None:
        gw.relay.note_history(room, history.messages[-1].id if history.messages else None)
    member.go_live({m.id for m in history.messages} if history is not None else set())
    ack: dict[str, object] = {
        "room": room,
        "session": session,
        "lastRead": history.last_read if history is not None else None,
        "unread": (history.unread or 0) if history is not None else 0,
    }
    if history is None:
        ack["history"] = False
    if data.since is not None or data.since_rev is not None:
        ack["recovered"] = bool(history is not None and history.recovered)
    return ack


def _session_for(gw: ChatGateway, conn: Connection, data: JoinData) -> str:
    if data.session is not None:
        if gw.signer.username_of(data.session) != data.username:
            raise ProtocolError("invalid", "the session is not valid for this username")
        if conn.session is not None and data.session != conn.session:
            raise ProtocolError("invalid", "this connection already proved another session")
        return data.session
    return conn.session or gw.signer.mint(data.username)


async def _history(
    gw: ChatGateway, room: str, data: JoinData, reader: str
) -> rpc.HistoryReply | None:
    """The joiner's history and read state, or None when history cannot answer (the join goes
    on without)."""
    try:
        if data.since_rev is not None:
            return await gw.history.since_rev(room, data.since_rev, reader, data.username)
        if data.since is not None:
            return await gw.history.since(room, data.since, reader, data.username)
        return await gw.history.recent(room, reader=reader, username=data.username)
    except (BusUnavailableError, ProtocolError) as exc:
        log.warning("history unavailable; joined without it", room=room, reason=str(exc))
        return None
