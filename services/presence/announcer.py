"""Presence's announcements, published in the order the state changed, off the request lock.

Requests change the state one at a time, and each queues what its change means here before the
next one runs; one task publishes the queue in order. An `activeUsers` is computed when it is
sent, so a room whose list changed several times while it waited is announced once, with its
newest list: a join storm costs one list per room per flush instead of one per join.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from roomcast.shared import topics
from roomcast.shared.bus import Bus
from roomcast.shared.frames import encode_event

from .state import Changes

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Event:
    room: str
    event: str
    data: object  # None for activeUsers: computed when sent
    origin: str
    done: asyncio.Future[None] | None = None


class Announcer:
    def __init__(self, bus: Bus, users: Callable[[str], list[str]]) -> None:
        self._bus = bus
        self._users = users
        self._queue: deque[_Event] = deque()
        self._lists_queued: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="presence-announcer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def announce(self, changes: Changes) -> asyncio.Future[None] | None:
        """Queue what a change means: per room, `userLeave`s, then `activeUsers`, then `userJoin`
        (which the joiner's own connection skips). The future resolves once all of it is sent."""
        events = [
            _Event(room, "userLeave", {"username": u, "room": room}, "") for room, u in changes.left
        ]
        for room in sorted(changes.rooms):
            if room not in self._lists_queued:
                self._lists_queued.add(room)
                events.append(_Event(room, "activeUsers", None, ""))
        events += [
            _Event(room, "userJoin", {"username": u, "room": room}, conn)
            for room, u, conn in changes.joined
        ]
        if not events:
            return None
        events[-1].done = asyncio.get_running_loop().create_future()
        self._queue.extend(events)
        self._wake.set()
        return events[-1].done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                item = self._queue.popleft()
                try:
                    await self._send(item)
                except Exception as exc:  # the events are ephemeral: heartbeats re-announce
                    log.warning("presence event not published", event=item.event, error=str(exc))
                finally:
                    if item.done is not None and not item.done.done():
                        item.done.set_result(None)

    async def _send(self, item: _Event) -> None:
        data = item.data
        if item.event == "activeUsers":
            self._lists_queued.discard(item.room)
            data = self._users(item.room)
        frame = encode_event(item.event, data, room=item.room).encode()
        headers = {"origin": item.origin} if item.origin else {}
        await self._bus.publish(topics.room_event(item.room, item.event), frame, headers=headers)
