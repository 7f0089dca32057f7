"""`userTyping`: a hint to the room, rate limited per connection, never stored."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from roomcast.shared import topics
from roomcast.shared.topics import Header

from ..connection import Connection
from ..protocol import TypingData, event_frame
from .guards import joined, own, within

if TYPE_CHECKING:
    from ..gateway import ChatGateway


async def handle(gw: ChatGateway, conn: Connection, data: TypingData) -> dict[str, object]:
    joined(gw, conn, data.room, "typing")
    own(conn, data.username)
    await gw.moderation.refuse_muted(conn, data.room)
    within(conn.limiters.typing, gw.settings.typing_per_second, "typing events")
    payload: dict[str, object] = {"username": data.username, "room": data.room}
    await gw.bus.publish(
        topics.room_event(data.room, "userTyping"),
        event_frame("userTyping", payload, room=data.room).encode(),
        headers={Header.ORIGIN: conn.id, Header.SENT_AT: f"{time.time():.6f}"},
    )
    return payload
