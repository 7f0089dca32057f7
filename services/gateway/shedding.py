"""Overload sheds instead of queueing: a room event that reaches this gateway older than the send
queue's age bound (`ROOMCAST_SEND_QUEUE_SECONDS`, PROTOCOL.md 2.2) is not written anywhere.

The bound of 2.2 is on a socket's own queue, but an overloaded gateway falls behind before
anything is queued for a socket: deliveries wait in the broker's queue and the bus inbox. A
socket that gets an event more than the bound after it was published is that far behind
however empty its own queue is, so it is closed with 1013 (try again later) like a slow
consumer, and the client recovers what it missed from history with `since`, which costs one read
instead of every stale event written late. Later stale events of the room find no socket left.

The age is measured from the publishing gateway's `sent-at` header, a wall clock: hosts' clocks
must agree to well within the bound (NTP does), as for mutes' ends (docs/auth.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import structlog

from .connection import CLOSE_TRY_LATER
from .logthrottle import LogThrottle
from .membership import Member
from .metrics import SHED

log = structlog.get_logger(__name__)


def age_of(sent: str | None, wall: Callable[[], float] = time.time) -> float | None:
    """Seconds since an event's publication, from its `sent-at` header (seconds since the
    epoch); None when it is unstamped or the stamp is not a number."""
    if sent is None:
        return None
    try:
        return wall() - float(sent)
    except ValueError:
        return None


class Shedder:
    def __init__(self, max_lag: float) -> None:
        self._max_lag = max_lag
        self._throttle = LogThrottle(burst=3, window=10.0)

    def behind(self, age: float) -> bool:
        """Whether an event that took `age` seconds from its publication is past the bound."""
        return age > self._max_lag

    def shed(self, room: str, members: Iterable[Member], age: float) -> int:
        """Close the room's live sockets (1013); returns how many. Joiners still held get the
        event later through their join, which reads history anyway."""
        SHED.inc()
        closed = 0
        for member in members:
            if member.held is None and not member.conn.is_closing:
                member.conn.close_soon(CLOSE_TRY_LATER)
                closed += 1
        left_out = self._throttle.allow(room)
        if left_out is not None and closed:
            log.warning(
                "gateway behind: room event older than the send queue bound; sockets closed 1013",
                room=room,
                age_seconds=round(age, 3),
                bound_seconds=self._max_lag,
                sockets=closed,
                left_out=left_out,
            )
        return closed
