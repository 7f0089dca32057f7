"""`updateChat`: a message, stamped, published once for the room and stored by history.

A client's own `id` is judged by the store (through history's ordered queue, so a message
published a moment ago counts): a repeat of one's own message is acknowledged as stored, an id
that belongs to someone else's message is refused, on every gateway and after any restart.
While history does not answer, ids are not judged (`HistoryClient.lookup`), so chat goes on.
The ack is sent once the broker has confirmed the publication.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

import orjson

from roomcast.shared import topics
from roomcast.shared.bus import BusUnavailableError
from roomcast.shared.models import ChatMessage
from roomcast.shared.topics import Header

from ..connection import Connection
from ..protocol import ChatData, ProtocolError, event_frame
from ..relay import Seen
from .guards import joined, own, within

if TYPE_CHECKING:
    from ..gateway import ChatGateway


async def handle(gw: ChatGateway, conn: Connection, data: ChatData) -> dict[str, object]:
    joined(gw, conn, data.room, "writing")
    own(conn, data.username)
    if data.id is not None:
        stored = await _stored(gw, data.room, data.id)
        if stored is not None:
            if stored.get("username") != data.username:
                raise ProtocolError("invalid", f"id {data.id!r} belongs to another message")
            return stored
    within(gw.chat_budget(conn), gw.settings.rate_per_second, "messages")
    message = ChatMessage(
        id=data.id or uuid.uuid4().hex,
        username=data.username,
        body=data.body.strip(),
        time=int(time.time() * 1000),
        room=data.room,
        rev=gw.revs.next(),
    )
    payload = message.wire()
    frame = event_frame("updateChat", payload, room=data.room)
    publication = uuid.uuid4().hex[:16]
    gw.recent.remember(data.room, message.id, Seen(publication, frame, False, conn.id))
    try:
        async with asyncio.timeout(gw.settings.publish_timeout):
            await gw.bus.publish(
                topics.room_event(data.room, "updateChat"),
                frame.encode(),
                headers={
                    Header.ORIGIN: conn.id,
                    Header.MESSAGE_ID: message.id,
                    Header.PUBLICATION: publication,
                    Header.SENT_AT: f"{time.time():.6f}",
                    Header.AUTHOR: conn.session_hash or "",
                },
                persistent=True,
            )
    except (BusUnavailableError, TimeoutError) as exc:
        gw.recent.forget(data.room, message.id, publication)
        raise BusUnavailableError("message not confirmed by the broker") from exc
    return payload


async def _stored(gw: ChatGateway, room: str, message_id: str) -> dict[str, object] | None:
    """The message already known under this id: from this gateway's memory, else the store."""
    seen = gw.recent.get(room, message_id)
    if seen is not None:
        data: dict[str, object] = orjson.loads(seen.frame)["data"]
        return data
    try:
        stored = await gw.history.lookup(room, message_id)
    except BusUnavailableError:
        # History is down: chat goes on (2.2). The store keeps the first message of an id, so a
        # clash is only possible while history is away; the lookup is back when it is.
        return None
    return stored.wire() if stored is not None else None
