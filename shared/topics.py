"""Routing keys and queue names: the broker topology in one place (docs/architecture.md).

Room and user names cannot contain `.`, `*` or `#`, so they are safe as routing-key words.
AMQP ends a routing key at 255 bytes: a name is at most 200 UTF-8 bytes (`Limits`), and an
event name at most `MAX_EVENT_BYTES`, so every key built here fits (tests/unit/test_names.py).
"""

from __future__ import annotations

from typing import NamedTuple

MAX_KEY_BYTES = 255  # AMQP's limit on a routing key
MAX_EVENT_BYTES = 32  # the longest event or op name a key may carry


class Header:
    """Header names of room events: short strings a receiver routes on without decoding."""

    ORIGIN = "origin"  # the connection that published it (it does not get its own event back)
    MESSAGE_ID = "id"  # a chat message's id, for de-duplication
    PUBLICATION = "pub"  # one publication of that id, to tell a re-send from a repeat
    SENT_AT = "ts"  # publish time, seconds since the epoch (fan-out latency)
    AUTHOR = "author"  # the identity (session hash) of a chat message's author
    NOT_TO = "not-to"  # a username whose own sockets skip the event (seen receipts)
    # stage timestamps, only with ROOMCAST_TRACE_STAGES (roomcast.shared.bus.trace)
    TRACE_RECEIVED = "t-recv"  # the gateway took the client's frame
    TRACE_PUBLISHED = "t-pub"  # handed to the broker client
    TRACE_DELIVERED = "t-dlv"  # the broker client handed the delivery over (receiver only)


class Route(NamedTuple):
    """A routing key taken apart: `room.<room>.<event>`, `user.<username>.<event>`,
    `history.<room>` (event "read"), `presence.<op>` (name ""), `moderation.<room>` or
    `disconnect.<username>` (event "")."""

    kind: str
    name: str
    event: str


def parse(routing_key: str) -> Route:
    """Take a routing key apart; keys this module did not build give kind "" (never raises)."""
    kind, _, rest = routing_key.partition(".")
    if kind in ("room", "user"):
        name, _, event = rest.partition(".")
        return Route(kind, name, event)
    if kind == "history":
        return Route(kind, rest, "read")
    if kind == "presence":
        return Route(kind, "", rest)
    if kind in ("moderation", "disconnect"):
        return Route(kind, rest, "")
    return Route("", "", "")


def history_queue(exchange: str) -> str:
    """The durable queue history replicas share; named after the exchange, so that several
    deployments (or test runs) can share one broker."""
    return f"{exchange}.history"


def presence_queue(exchange: str) -> str:
    return f"{exchange}.presence"


def room_event(room: str, event: str) -> str:
    """Broadcast of a room event to every gateway serving the room."""
    return f"room.{room}.{event}"


PRESENCE_CHANGES = (
    "presence"  # `room.<room>.presence`: a room's userJoin/userLeave frames, one per line
)


def room_pattern(room: str) -> str:
    """What a gateway binds while it has a client in the room."""
    return f"room.{room}.*"


def user_event(username: str, event: str) -> str:
    """An event for every connection of one user (invitations)."""
    return f"user.{username}.{event}"


def user_pattern(username: str) -> str:
    """One user's events (gateways bind `USER_EVENTS` instead: see there)."""
    return f"user.{username}.*"


def history_request(room: str) -> str:
    """A read of a room's history; it shares the history queue with the writes, so it is
    answered only after every message published before it has been stored."""
    return f"history.{room}"


def presence_request(op: str) -> str:
    return f"presence.{op}"


def moderation_change(room: str) -> str:
    """A room's moderation changed (2.4): broadcast to every gateway, whatever it serves."""
    return f"moderation.{room}"


def disconnect_user(username: str) -> str:
    """Close every connection of a user, on every gateway (the backend API's disconnect)."""
    return f"disconnect.{username}"


HISTORY_PATTERNS = ["room.*.updateChat", "history.*"]
PRESENCE_PATTERNS = ["presence.*"]
MODERATION_PATTERNS = ["moderation.*", "disconnect.*"]
USER_EVENTS = "user.*.*"
"""Every user's events, bound once by each gateway when its subscription starts: users' events
are rare (invitations, read markers), while a broker bind and unbind per user made every first
join of a connection pay RabbitMQ's costliest operation; the gateway routes them to its own connections of that user and drops the rest."""
