"""Webhook events on the wire: the JSON body of every POST, and where it travels on the bus.

A POST's body is `{"events": [EVENT, ...]}` (one or more, as presence batches them); an event is
`{"id", "type", "time", "room"}` plus `"username"` for member events and `"message"` (the
message object of PROTOCOL.md) for `message.posted`. The body published on the bus is the
exact body POSTed, encoded once by the service that emits it.

Delivery is at least once, so an event may arrive twice: its `id` is the key to drop repeats.
A `message.posted` id is derived from the room and the message id, so every repeat of one
message (a client's re-send, a redelivery) carries the same event id.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from roomcast.shared.models import ChatMessage

ROUTING_KEY = "webhook.events"
PATTERNS = ["webhook.*"]

EventType = Literal[
    "room.occupied", "room.vacated", "member.joined", "member.left", "message.posted"
]


def queue_name(exchange: str) -> str:
    """The durable work queue the senders share (named after the exchange, as history's)."""
    return f"{exchange}.webhooks"


class WebhookEvent(BaseModel):
    """One fact about a room. `time` is milliseconds since the epoch: when presence saw the
    change, or the message's own `time`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64, description="Unique per fact: drop repeats.")
    type: EventType
    time: int = Field(ge=0, description="Milliseconds since the epoch.")
    room: str = Field(min_length=1)
    # left out when unset (never null), and the OpenAPI says so
    username: str | SkipJsonSchema[None] = Field(
        default=None, description="member.joined and member.left: the user."
    )
    message: ChatMessage | SkipJsonSchema[None] = Field(
        default=None, description="message.posted: the message object, as clients get it."
    )


class WebhookPayload(BaseModel):
    """The body of one POST."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    events: list[WebhookEvent] = Field(min_length=1)

    def encode(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))

    @property
    def oldest(self) -> int:
        """Time (ms) of the oldest event: how long the POST has been owed."""
        return min(event.time for event in self.events)


def now_ms() -> int:
    return int(time.time() * 1000)


def message_posted(message: ChatMessage) -> WebhookEvent:
    key = f"message.posted\0{message.room}\0{message.id}".encode()
    return WebhookEvent(
        id=hashlib.sha256(key).hexdigest()[:32],
        type="message.posted",
        time=message.time,
        room=message.room,
        message=message,
    )


def room_event(kind: EventType, room: str, at: int, username: str | None = None) -> WebhookEvent:
    """A presence fact (occupied, vacated, joined, left): each is new, so its id is random."""
    return WebhookEvent(id=uuid.uuid4().hex, type=kind, time=at, room=room, username=username)
