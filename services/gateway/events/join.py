"""`userJoin`: the one event that involves every service, in the order PROTOCOL.md gives.

1. The room is bound first, so every event published from then on reaches this gateway; the
   member holds them back.
2. Presence (admission: names, private rooms) and history (the room's messages) are asked
   together; a room this gateway already serves answers `msgHistory` from its cache and asks
   history only for the read state (`joinhistory.py`). A room it does not serve yet is seeded
   first by one history read that every join arriving meanwhile shares (`RoomCache.warm`: a
   reconnect storm brings a hundred joins with `since` into each cold room at once); when that
   read is not answered, each of those joins goes on without history (2.2), as one that asked
   alone would. Presence refusing or not answering
   refuses the join (`unavailable` when it is down), and the join leaves no trace. History
   not answering does not: the joiner gets `msgHistory` `[]` and an ack with
   `"history": false` (2.2).
3. `msgHistory`, then the `activeUsers` snapshot from presence's answer (2.1), then the held
   events less the messages already in the history and the presence changes already in the
   snapshot: no gap, no repeat. The ack carries the
   reader's `lastRead` and `unread` (2.3).
A repeated join of a room the connection is in changes nothing and is acknowledged with the
first ack's data (its read state as history has it now) plus `"already": true` (2.1); it counts
against the join budget like any join.
A join by token (2.4) signs the connection in as the token's subject: its identity key stands
where an anonymous user's session hash does (presence, private rooms, read markers), its
`rooms` claim bounds the rooms it may join, and the ack names the user instead of a session.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from roomcast.shared import rpc, topics
from roomcast.shared.auth import Identity
from roomcast.shared.bus import BusUnavailableError
from roomcast.shared.sessions import session_hash

from ..auth import signin
from ..connection import Connection
from ..joinhistory import JoinHistory, ReadState, read_state
from ..membership import Member
from ..protocol import JoinData, ProtocolError, event_frame
from ..roomcache import Shown, shown
from .guards import own, within

if TYPE_CHECKING:
    from ..gateway import ChatGateway

log = structlog.get_logger(__name__)

_READ_STATE_SECONDS = 1.0  # a repeated join waits this long at most for history's read state


async def handle(gw: ChatGateway, conn: Connection, data: JoinData) -> dict[str, object]:
    identity = await signin.joiner(gw, conn, data.token)  # a signed-in connection's, or None
    username = identity.username if identity is not None else data.username
    if username is None:
        raise ProtocolError("invalid", "'userJoin' data needs 'username' (or 'token')")
    own(conn, username)
    if data.username is not None and data.username != username:
        raise ProtocolError(
            "username_mismatch", f"the token names {username!r}, not {data.username!r}"
        )
    room = data.room
    if identity is not None:
        signin.may_join(identity, room)
        session, hashed = None, identity.key
    else:
        session = _session_for(gw, conn, data, username)
        hashed = session_hash(session)
    within(conn.limiters.joins, gw.settings.join_per_second, "joins and leaves")
    member = gw.membership.member(conn, room)
    if member is not None:
        return await _again(gw, conn, member, {**_who(session, identity), "room": room})
    if len(gw.membership.rooms_of(conn)) >= gw.settings.max_rooms_per_connection:
        raise ProtocolError(
            "invalid",
            f"a connection may be in at most {gw.settings.max_rooms_per_connection} rooms; "
            "leave one first",
        )
    member = await gw.membership.enter(conn, room)
    sourcing = _history(gw, room, data, hashed, username)
    try:
        admission = await gw.presence.join(conn.id, username, hashed, room)
    except BaseException as exc:
        await _drop(sourcing)
        await gw.membership.leave(member)
        if isinstance(exc, BusUnavailableError):
            await gw.presence.forget(conn.id, room)
        raise
    member.admitted, member.private = True, admission.private
    if admission.moderation is not None:
        gw.moderation.learn(admission.moderation)
    if conn.username is None:
        conn.username, conn.session, conn.session_hash = username, session, hashed
        if identity is not None:
            signin.hold(conn, identity)
        gw.membership.identify(conn, username)
    source = await sourcing  # never fails: history's failures are a join without history
    history = await source.messages()
    conn.push(history.frame, "msgHistory")
    conn.push(event_frame("activeUsers", admission.users, room=room), "activeUsers")
    member.go_live(history.ids, admission.users)
    state = await source.state()
    ack: dict[str, object] = {
        **_who(session, identity),
        "room": room,
        "lastRead": state.last_read,
        "unread": state.unread,
        # may this user mute, kick and ban here (2.4: the room's owner, or a moderator)?
        "moderates": await gw.moderation.moderates(conn, room),
    }
    if not state.history:
        ack["history"] = False
    if data.since is not None or data.since_rev is not None:
        ack["recovered"] = state.recovered
    member.ack = dict(ack)
    return ack


class _Unanswered:
    """The history of a join whose room's shared seeding read history did not answer: as a
    join whose own read it did not answer, `msgHistory` `[]` and `"history": false` (2.2)."""

    def __init__(self, room: str) -> None:
        self._room = room

    async def cancel(self) -> None:
        return None

    async def messages(self) -> Shown:
        return shown(self._room, [])

    async def state(self) -> ReadState:
        return ReadState(None, 0, False, False)


Source = JoinHistory | _Unanswered


def _history(
    gw: ChatGateway, room: str, data: JoinData, reader: str, username: str
) -> asyncio.Future[Source]:
    """The join's history, started now (the room is bound): at once from a seeded room cache,
    else once the room's shared seeding read is answered (`RoomCache.warm`); the reader's read
    state is asked meanwhile, not after it (it does not depend on the messages)."""
    serial = gw.membership.bindings.serial(topics.room_pattern(room))
    if data.since_rev is not None or gw.room_cache.ready(room, serial):
        done: asyncio.Future[Source] = asyncio.get_running_loop().create_future()
        done.set_result(JoinHistory(gw, room, data, reader, username))
        return done
    state = read_state(gw, room, reader, username)
    return asyncio.ensure_future(_warmed(gw, room, serial, data, reader, username, state))


async def _warmed(
    gw: ChatGateway,
    room: str,
    serial: int | None,
    data: JoinData,
    reader: str,
    username: str,
    state: asyncio.Future[rpc.HistoryReply | None],
) -> Source:
    try:
        await gw.room_cache.warm(room, serial, lambda limit: gw.history.recent(room, limit))
    except BusUnavailableError as exc:
        state.cancel()
        log.warning("history unavailable; joined without it", room=room, reason=str(exc))
        return _Unanswered(room)
    except ProtocolError as exc:  # refused, not down: this join asks on its own
        log.warning("room cache not seeded", room=room, reason=str(exc))
    except BaseException:  # the join was dropped meanwhile
        state.cancel()
        raise
    return JoinHistory(gw, room, data, reader, username, state)


async def _drop(sourcing: asyncio.Future[Source]) -> None:
    """Stop the history of a join that failed: the wait for a shared read, or its own read."""
    if not sourcing.done():
        sourcing.cancel()
    try:
        source = await sourcing
    except BaseException:  # cancelled, or it failed: nothing started to stop
        return
    await source.cancel()


def _session_for(gw: ChatGateway, conn: Connection, data: JoinData, username: str) -> str:
    if data.session is not None:
        if gw.signer.username_of(data.session) != username:
            raise ProtocolError("invalid", "the session is not valid for this username")
        if conn.session is not None and data.session != conn.session:
            raise ProtocolError("invalid", "this connection already proved another session")
        return data.session
    return conn.session or gw.signer.mint(username)


def _who(session: str | None, identity: Identity | None) -> dict[str, object]:
    """The ack's proof of who joined: the session of an anonymous user, or the name a token
    signed in (that user proves itself with tokens, not sessions)."""
    if identity is not None:
        return {"username": identity.username}
    return {"session": session}


async def _again(
    gw: ChatGateway, conn: Connection, member: Member, who: dict[str, object]
) -> dict[str, object]:
    """A repeated join (2.1): the first ack's data plus `"already": true`, and no event again.

    The read state may have moved since (messages came, or were read elsewhere), so history is
    asked for it, briefly: one that does not answer leaves the first ack's. A first join that
    had no history keeps saying so. (A connection's frames are handled in turn, so the first
    join has been answered; a member without its ack would repeat only its room.)"""
    first = member.ack
    if first is None:
        return {**who, "already": True}
    ack = {**first, **who, "already": True}
    if "history" not in first and conn.session_hash is not None:
        try:
            async with asyncio.timeout(min(_READ_STATE_SECONDS, gw.settings.request_timeout)):
                state = await gw.history.read_state(member.room, conn.session_hash, conn.username)
        except (BusUnavailableError, ProtocolError, TimeoutError) as exc:
            log.info(
                "read state of a repeated join not refreshed",
                room=member.room,
                reason=str(exc) or type(exc).__name__,
            )
        else:
            ack["lastRead"], ack["unread"] = state.last_read, state.unread or 0
    return ack
