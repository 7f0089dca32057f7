"""Repairing live gaps: what a gateway does when its subscription may have lost deliveries (the
broker connection dropped and the queue was re-declared, or the inbox overflowed).

Where a repair starts: the bus marks where losses may have begun (`on_loss`, called between
two deliveries), and each served room's last relayed message at that mark is its start. Not the
last one relayed by the time the repair runs: after a reconnect, messages published after the
gap reach the relay before the repair asks, and starting after them would skip everything lost
(the cause of the permanent reader gaps of repeated broker restarts, docs/reliability.md). A
room keeps its earliest start until a repair of it succeeds, so a second gap during a repair,
or a repair that failed, loses nothing.

For every room it serves, it asks history for the messages after that start (through history's
ordered queue, so the answer holds everything stored before it) and relays those its sockets
have not seen, de-duplicated by id. When history does not answer while the bus is up, or more
were missed than a recovery holds, the room's sockets are closed with 1013 so their clients
re-join with `since`: a gap is never left silent. When the bus itself went away again, the
room waits for the repair that the next reconnect starts.

Changes (PROTOCOL.md 2.3) are repaired too: every message whose rev is above that of the last
message relayed in the room, and which is not one of the new ones, goes out again in its
current state (`deleteChat` for a tombstone, `editChat` for an edited message, else `react`).
A change the sockets had already is sent again; clients replace a message by id, so it is
harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import orjson
import structlog
from prometheus_client import Counter

from roomcast.shared.bus import BusUnavailableError
from roomcast.shared.errors import ProtocolError
from roomcast.shared.rpc import HistoryReply

from .connection import CLOSE_TRY_LATER
from .protocol import ServerEvent, event_frame

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


_LAST = object()  # a room whose start was not marked: start after its last relayed message


class Repairer:
    def __init__(self, gateway: ChatGateway) -> None:
        self._gw = gateway
        self._task: asyncio.Task[None] | None = None
        self._again = False
        # room -> where its next repair starts: the id relayed last before the loss, or None
        # when nothing was (then the newest `recovery_max`); bounded by the rooms served
        self._starts: dict[str, str | None] = {}

    def on_loss(self) -> None:
        """Deliveries may be lost from here on: remember where each served room's repair
        starts, unless an earlier loss not yet repaired already set it."""
        last_ids = self._gw.relay.last_ids
        for room in self._gw.membership.rooms():
            self._starts.setdefault(room, last_ids.get(room))

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
            for room in [r for r in self._starts if r not in rooms]:
                del self._starts[room]  # no longer served: nobody here to repair
            log.info("repairing rooms after lost deliveries", rooms=len(rooms))
            await asyncio.gather(*(self._repair(room) for room in rooms))
            if not self._again:
                return

    async def _repair(self, room: str) -> None:
        gw = self._gw
        start = self._starts.pop(room, _LAST)
        last = gw.relay.last_ids.get(room) if start is _LAST else start
        assert last is None or isinstance(last, str)
        since_rev = self._rev_of(room, last) or gw.relay.history_revs.get(room)
        reply: HistoryReply | None = None
        changes: HistoryReply | None = None
        for attempt in range(_ATTEMPTS):
            try:
                if last is not None:
                    reply = await gw.history.since(room, last)
                else:
                    reply = await gw.history.recent(room, gw.settings.recovery_max)
                if since_rev is not None:
                    changes = await gw.history.since_rev(room, since_rev)
                break
            except (BusUnavailableError, ProtocolError) as exc:
                reply = None
                log.warning("gap repair: history did not answer", room=room, reason=str(exc))
                await asyncio.sleep(0.5 * (attempt + 1))
        if reply is None and not gw.bus.is_ready:
            # the broker went away again: its reconnect starts another repair, from here
            self._starts[room] = last
            REPAIRS.labels("deferred").inc()
            log.warning("gap repair deferred to the next reconnect", room=room)
            return
        if (
            reply is None
            or (last is not None and not reply.recovered)
            or (changes is not None and not changes.recovered)
        ):
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
        if changes is not None:
            count += self._resend_changes(room, changes, {m.id for m in reply.messages})
        REPAIRED.inc(count)
        REPAIRS.labels("repaired" if count else "complete").inc()
        if count:
            log.info("gap repaired", room=room, messages=count)

    def _rev_of(self, room: str, message_id: str | None) -> int | None:
        """The rev of a message this gateway relayed (read from its frame, only in a repair),
        where missed changes start; None when it is not remembered (then the joiners'
        history says where)."""
        seen = self._gw.recent.get(room, message_id) if message_id is not None else None
        if seen is None:
            return None
        try:
            rev = orjson.loads(seen.frame)["data"]["rev"]
        except (ValueError, KeyError, TypeError):
            return None
        return rev if isinstance(rev, int) else None

    def _resend_changes(self, room: str, changes: HistoryReply, new: set[str]) -> int:
        count = 0
        for message in changes.messages:
            if message.id in new:
                continue  # relayed above, in its current state
            event: ServerEvent = (
                "deleteChat" if message.deleted else "editChat" if message.edited else "react"
            )
            frame = event_frame(event, message.wire(), room=room)
            size = len(frame.encode())
            for member in self._gw.membership.members(room):
                member.deliver(frame, event, None, size)
            count += 1
        return count
