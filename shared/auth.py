"""Who a signed-in user is (PROTOCOL.md 2.4): what a verified token says, in one value every
service can import (the gateway's token verifier makes it; moderation reads `sub` and `roles`).

A signed-in user's identity key is derived from the token subject, never from a session: it is
what presence holds the username for, what private rooms and room ownership are bound to, and
whose read markers and edits are whose (2.3). Keys of subjects start with `SUBJECT_PREFIX`, so a
service can tell a subject from an anonymous session (a session's key is a bare SHA-256 hex)
without being told; the hash keeps a subject's raw id out of every store and log.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

MODERATOR = "moderator"  # the role that moderates every room
SUBJECT_PREFIX = "sub:"


def subject_key(sub: str) -> str:
    """The identity key of a token subject: stable for the subject, distinct from any session's
    key (another prefix and another hash domain)."""
    return SUBJECT_PREFIX + hashlib.sha256(b"roomcast-subject|" + sub.encode()).hexdigest()


def is_subject_key(key: str) -> bool:
    return key.startswith(SUBJECT_PREFIX)


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified token's claims. `rooms` None means every public room (the claim was absent);
    `exp` is the token's expiry in seconds since the epoch."""

    sub: str
    username: str
    rooms: frozenset[str] | None
    roles: frozenset[str]
    exp: float

    @property
    def key(self) -> str:
        return subject_key(self.sub)

    @property
    def is_moderator(self) -> bool:
        """Moderates every room (the `moderator` role)."""
        return MODERATOR in self.roles

    def may_join(self, room: str) -> bool:
        return self.rooms is None or room in self.rooms
