"""`markRead`: the user's read marker in a room moves forward (2.3).

Markers belong to the user's identity (the session), so every connection of the user learns the
new marker (`readMarker` `{room, id}`), and in a private room the other member gets a seen
receipt (`readMarker` `{room, username, id}`). Each marker is a request to history and a write,
so a connection has a budget of its own for them (as many as messages, but not shared with them).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from roomcast.shared import topics
from roomcast.shared.topics import Header

from ..connection import Connection
from ..protocol import MarkReadData, event_frame
from . import changes
from .guards import joined, within

if TYPE_CHECKING:
    from ..gateway import ChatGateway


async def handle(gw: ChatGateway, conn: Connection, data: MarkReadData) -> dict[str, object]:
    member = joined(gw, conn, data.room, "marking")
    within(conn.limiters.reads, gw.settings.rate_per_second, "read markers")
    assert conn.username is not None
    result = await gw.history.change(data.room, changes.request(gw, conn, "markRead", data.id))
    marker = str(result["id"])
    unread = result.get("unread", 0)
    sent = {Header.SENT_AT: f"{time.time():.6f}"}
    own = {"room": data.room, "id": marker}
    await gw.bus.publish(
        topics.user_event(conn.username, "readMarker"),
        event_frame("readMarker", own, room=data.room).encode(),
        headers=sent,
    )
    if member.private:
        receipt = {"room": data.room, "username": conn.username, "id": marker}
        await gw.bus.publish(
            topics.room_event(data.room, "readMarker"),
            event_frame("readMarker", receipt, room=data.room).encode(),
            headers={**sent, Header.NOT_TO: conn.username},
        )
    return {"room": data.room, "id": marker, "unread": unread}
