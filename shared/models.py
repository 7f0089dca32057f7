"""Models that cross a process boundary: the chat message, and the names the protocol allows.

The wire contract (PROTOCOL.md) fixes the alphabets; limits come from `Limits` so a deployment
can tune them. Validation here is pure: no I/O, shared by the gateway, history and presence.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

NAME_RE = re.compile(r"^[\w-]+$")  # Unicode letters and digits, `_` and `-`
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MAIN_ROOM = "main"


def is_valid_name(value: str, max_chars: int) -> bool:
    """A username or room name: 1..max characters of letters, digits, `_`, `-`."""
    return 0 < len(value) <= max_chars and NAME_RE.match(value) is not None and value.isprintable()


class ChatMessage(BaseModel):
    """A stored chat message, exactly as clients see it."""

    model_config = ConfigDict(frozen=True)

    id: str
    username: str
    body: str
    time: int
    room: str
