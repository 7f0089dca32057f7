"""A connection's answers (`ack`, `error`) in the order its frames came, while some of them wait
for a broker confirm.

`updateChat` does not hold the connection's next frame until the broker confirms it: its publish
starts (in frame order, so the broker gets a connection's messages in the order they were sent:
RabbitBus publishes on one confirm channel whose lock wakes waiters first come first served, and
InMemoryBus routes a message when the publish starts) and its answer waits here. An answer only goes out once every answer to the frames before it
has: an ack always follows its confirm, acks keep the frames' order, and a publish that is not
confirmed answers `unavailable` in its place without holding up the ones after it. Nothing waits
in the common case (no publish in flight): the answer is queued on the socket at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Connection

# An answer in waiting: the confirm, and what to send once it is settled (None: nothing).
Answer = Callable[[BaseException | None], tuple[str, str] | None]


@dataclass(frozen=True, slots=True)
class Confirming:
    """What a handler returns whose ack must wait for a broker confirm: `data` is the ack's."""

    confirm: asyncio.Future[None]
    data: dict[str, object]


class Replies:
    """One connection's answers still waiting behind an unconfirmed publish."""

    __slots__ = ("_conn", "_queue")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: deque[tuple[asyncio.Future[None] | None, Answer | tuple[str, str]]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def send(self, frame: str, event: str) -> None:
        """Answer now, or behind the answers still waiting."""
        if self._queue:
            self._queue.append((None, (frame, event)))
        else:
            self._conn.push(frame, event)

    def after(self, confirm: asyncio.Future[None], answer: Answer) -> None:
        """Answer once `confirm` is settled, and after every answer queued before."""
        self._queue.append((confirm, answer))
        confirm.add_done_callback(self._flush)

    async def wait_below(self, limit: int) -> None:
        """Hold the connection's reader while `limit` publishes are in flight."""
        while len(self._queue) >= limit:
            head = self._queue[0][0]
            if head is None or head.done():
                self._flush()
            else:
                await asyncio.wait([head])

    def _flush(self, _: object = None) -> None:
        queue = self._queue
        while queue:
            confirm, answer = queue[0]
            if confirm is not None and not confirm.done():
                return
            queue.popleft()
            if isinstance(answer, tuple):
                reply: tuple[str, str] | None = answer
            else:
                assert confirm is not None
                reply = answer(None if confirm.cancelled() else confirm.exception())
            if reply is not None:
                self._conn.push(*reply)
