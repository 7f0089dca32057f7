"""Routing keys and queue names: the broker topology in one place (docs/architecture.md).

Room and user names cannot contain `.`, `*` or `#`, so they are safe as routing-key words.
"""

from __future__ import annotations


def history_queue(exchange: str) -> str:
    """The durable queue history replicas share; named after the exchange, so that several
    deployments (or test runs) can share one broker."""
    return f"{exchange}.history"


def presence_queue(exchange: str) -> str:
    return f"{exchange}.presence"


def room_event(room: str, event: str) -> str:
    """Broadcast of a room event to every gateway serving the room."""
    return f"room.{room}.{event}"


def room_pattern(room: str) -> str:
    """What a gateway binds while it has a client in the room."""
    return f"room.{room}.*"


def user_event(username: str, event: str) -> str:
    """An event for every connection of one user (invitations)."""
    return f"user.{username}.{event}"


def user_pattern(username: str) -> str:
    return f"user.{username}.*"


def history_request(room: str) -> str:
    """A read of a room's history; it shares the history queue with the writes, so it is
    answered only after every message published before it has been stored."""
    return f"history.{room}"


def presence_request(op: str) -> str:
    return f"presence.{op}"


HISTORY_PATTERNS = ["room.*.updateChat", "history.*"]
PRESENCE_PATTERNS = ["presence.*"]
