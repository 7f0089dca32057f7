"""Models that cross a process boundary: the chat message, and the names the protocol allows.

The wire contract (PROTOCOL.md) fixes the alphabets; limits come from `Limits` so a deployment
can tune them. Validation here is pure: no I/O, shared by the gateway, history and presence.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from roomcast.shared.names import InvalidNameError, normalise_name

CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MAIN_ROOM = "main"


def is_valid_name(value: str, max_chars: int, max_bytes: int | None = None) -> bool:
    """A username or room name already in its normal form (roomcast.shared.names), within
    `max_chars` characters and `max_bytes` UTF-8 bytes (default: two per character, which is
    what the default limits are)."""
    limit = 2 * max_chars if max_bytes is None else max_bytes
    try:
        return normalise_name(value, "username", max_chars, limit) == value
    except InvalidNameError:
        return False


class ChatMessage(BaseModel):
    """A chat message in its current state, exactly as clients see it (`wire()`).

    `rev` orders the changes of one room (PROTOCOL.md 2.3): a new message, an edit, a delete and
    a reaction each get a larger one. A gateway proposes it when it publishes (`RevClock`), and
    the store may raise it, never lower it, to keep a room's revs unique and growing in the
    order they were stored: so `sinceRev` from the largest rev a client saw misses nothing.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    username: str
    body: str
    time: int
    room: str
    rev: int = 0
    edited: int | None = None  # ms of the last edit
    deleted: bool | None = None  # True for a tombstone (then `body` is "")
    reactions: dict[str, list[str]] | None = None  # emoji -> sorted usernames; none left out

    def wire(self) -> dict[str, object]:
        """The message object of the protocol: optional fields only when they say something."""
        return self.model_dump(exclude_none=True)


class RevClock:
    """Proposes revs: milliseconds times 1000 plus a counter, never repeating or going back
    in one process, so proposals of several gateways interleave roughly in time order."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        self._last = max(int(self._clock() * 1000) * 1000, self._last + 1)
        return self._last
