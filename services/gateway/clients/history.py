"""What the gateway asks history, over the bus: one method per question.

Each call is bounded by the request timeout; history not answering raises
`BusUnavailableError` (a `BusTimeoutError`), a refusal raises its `ProtocolError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from roomcast.shared import rpc, topics
from roomcast.shared.bus import Bus, BusUnavailableError
from roomcast.shared.config import Settings
from roomcast.shared.models import ChatMessage

from .readstates import ReadStateBatcher

log = structlog.get_logger(__name__)

_LOOKUP_TIMEOUT = 1.0
_LOOKUPS_OFF_SECONDS = 5.0


class HistoryClient:
    """Reads go through the history service's ordered queue: each is answered after every
    message published before it is stored."""

    def __init__(self, bus: Bus, settings: Settings, clock: Callable[[], float] = time.monotonic):
        self._bus = bus
        self._settings = settings
        self._clock = clock
        self._lookups_off_until = 0.0
        self.read_states = ReadStateBatcher(bus, settings.request_timeout)

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

    async def read_state(self, room: str, reader: str, username: str | None) -> rpc.HistoryReply:
        """The reader's read state alone (`messages` empty): for a join whose history the
        gateway has already. History answers it from memory, in queue order like any read;
        a turn's read states go in one request (`ReadStateBatcher`)."""
        return await self.read_states.read_state(room, reader, username)

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
