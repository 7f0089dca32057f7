"""Repairing live gaps: what a gateway does when its subscription may have lost deliveries (the
broker connection dropped and the queue was re-declared, or the inbox overflowed).

For every room it serves, it asks history for the messages after the last one it relayed there
(through history's ordered queue, so the answer holds everything stored before it) and relays
those its sockets have not seen, de-duplicated by id. When that cannot be done (history does
not answer, or more were missed than a recovery holds), the room's sockets are closed with 1013
so their clients re-join with `since`: a gap is never left silent.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog
from prometheus_client import Counter

from roomcast.shared.bus import BusUnavailableError
from roomcast.shared.errors import ProtocolError
from roomcast.shared.rpc import HistoryReply

from .connection import CLOSE_TRY_LATER
from .protocol import event_frame

if TYPE_CHECKING:
    from .gateway import ChatGateway

log = structlog.get_logger(__name__)

REPAIRS = Counter(
    "roomcast_gateway_gap_repairs_total",
    "Rooms checked after deliveries may have been lost, by outcome",
    ["outcome"],
)
REPAIRED = Counter("roomcast_gateway_gap_messages_total", "Messages relayed late by a gap repair")

_ATTEMPTS = 3


class Repairer:
    def __init__(self, gateway: ChatGateway) -> None:
        self._gw = gateway
        self._task: asyncio.Task[None] | None = None
        self._again = False

    async def on_gap(self) -> None:
        """Start a repair of every served room; one runs at a time, and a gap reported while it
        runs starts another after it."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run(), name="gateway-gap-repair")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self) -> None:
        """For tests and drains: until no repair is running."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        while True:
            self._again = False
            rooms = self._gw.membership.rooms()
            log.info("repairing rooms after lost deliveries", rooms=len(rooms))
            await asyncio.gather(*(self._repair(room) for room in rooms))
            if not self._again:
                return

    async def _repair(self, room: str) -> None:
        gw = self._gw
        last = gw.relay.last_ids.get(room)
        reply: HistoryReply | None = None
        for attempt in range(_ATTEMPTS):
            try:
                if last is not None:
                    reply = await gw.history.since(room, last)
                else:
                    reply = await gw.history.recent(room, gw.settings.recovery_max)
                break
            except (BusUnavailableError, ProtocolError) as exc:
                log.warning("gap repair: history did not answer", room=room, reason=str(exc))
                await asyncio.sleep(0.5 * (attempt + 1))
        if reply is None or (last is not None and not reply.recovered):
            REPAIRS.labels("closed").inc()
            members = list(gw.membership.members(room))
            log.warning(
                "gap repair impossible; sockets told to recover with since",
                room=room,
                sockets=len(members),
            )
            for member in members:
                member.conn.close_soon(CLOSE_TRY_LATER)
            return
        count = 0
        for message in reply.messages:
            frame = event_frame("updateChat", message.wire(), room=room)
            if gw.relay.replay(room, message.id, frame):
                count += 1
        REPAIRED.inc(count)
        REPAIRS.labels("repaired" if count else "complete").inc()
        if count:
            log.info("gap repaired", room=room, messages=count)
