"""Where a join's `msgHistory` and read state come from: the room cache or the history service.

A join into a room this gateway already serves takes `msgHistory` from `RoomCache` (no gap:
see there) and asks history only for the reader's `lastRead`/`unread` (`read_state`: no
messages; history answers it from memory), concurrently with presence. The trade: `msgHistory` still waits for that small answer, as
PROTOCOL.md 2.2 says a join that history does not answer gets `[]` and `"history": false`, and
the ack's read state exists only in history; asked together with presence, it is mostly there
by the time presence answers. Otherwise history is asked for both in one read, as before, and a
read of the newest messages seeds the cache.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from roomcast.shared import rpc, topics
from roomcast.shared.bus import BusUnavailableError

from .protocol import JoinData, ProtocolError
from .roomcache import Cached, Shown, shown

if TYPE_CHECKING:
    from .gateway import ChatGateway

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ReadState:
    """What the join's ack says besides who and where."""

    last_read: str | None
    unread: int
    history: bool  # False: history did not answer and `msgHistory` was `[]` (2.2)
    recovered: bool


class JoinHistory:
    def __init__(
        self,
        gw: ChatGateway,
        room: str,
        data: JoinData,
        reader: str,
        user: str,
        state: asyncio.Future[rpc.HistoryReply | None] | None = None,
    ) -> None:
        """Start the read (the room is bound already); call before presence is asked. `state`:
        the reader's read state, asked already (`read_state`), which a cached answer uses."""
        self._gw, self._room = gw, room
        cache = gw.room_cache
        serial = gw.membership.bindings.serial(topics.room_pattern(room))
        limit = gw.settings.history_default
        self._cached: Cached | None = None
        self._token: int | None = None
        if data.since_rev is None:
            since = (data.since, gw.settings.recovery_max) if data.since is not None else None
            self._cached = cache.answer(room, serial, limit, since)
        if self._cached is not None:
            self._reading = state if state is not None else read_state(gw, room, reader, user)
        else:
            if state is not None:
                state.cancel()  # history's answer to the whole read carries it
            if data.since is None and data.since_rev is None:
                self._token = cache.reading(room, serial)
            self._reading = asyncio.ensure_future(_ask(gw, room, data, reader, user))

    async def cancel(self) -> None:
        self._reading.cancel()
        await asyncio.gather(self._reading, return_exceptions=True)

    async def messages(self) -> Shown:
        """`msgHistory`: from the cache, else from history's answer (`[]` without one)."""
        if self._cached is not None:
            if await self._reading is None:
                return shown(self._room, [])  # history is down: as any join it does not answer
            result = self._cached.shown
        else:
            history = await self._reading
            if history is None:
                return shown(self._room, [])
            limit = self._gw.settings.history_default
            self._gw.room_cache.seed(self._room, self._token, history, limit)
            messages = [m.wire() for m in history.messages]
            result = shown(self._room, messages, history.newest)
        self._gw.relay.note_history(self._room, result.newest, result.last_rev)
        return result

    async def state(self) -> ReadState:
        history = await self._reading
        if history is None:
            return ReadState(None, 0, False, False)
        cached = self._cached
        recovered = cached.recovered if cached is not None else history.recovered
        return ReadState(history.last_read, history.unread or 0, True, bool(recovered))


def read_state(
    gw: ChatGateway, room: str, reader: str, username: str
) -> asyncio.Future[rpc.HistoryReply | None]:
    """The reader's read state alone, asked now (None: history cannot answer)."""
    return asyncio.ensure_future(_ask(gw, room, None, reader, username))


async def _ask(
    gw: ChatGateway, room: str, data: JoinData | None, reader: str, username: str
) -> rpc.HistoryReply | None:
    """The joiner's history and read state (`data` None: the read state alone), or None when
    history cannot answer (the join goes on without)."""
    try:
        if data is None:
            return await gw.history.read_state(room, reader, username)
        if data.since_rev is not None:
            return await gw.history.since_rev(room, data.since_rev, reader, username)
        if data.since is not None:
            return await gw.history.since(room, data.since, reader, username)
        return await gw.history.recent(room, reader=reader, username=username)
    except (BusUnavailableError, ProtocolError) as exc:
        log.warning("history unavailable; joined without it", room=room, reason=str(exc))
        return None
