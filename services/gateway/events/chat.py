"""`updateChat`: a message, stamped, published once for the room and stored by history.

A client's own `id` is judged by the store (through history's ordered queue, so a message
published a moment ago counts): a repeat of one's own message is acknowledged as stored, an id
that belongs to someone else's message is refused, on every gateway and after any restart.
While history does not answer, ids are not judged (`HistoryClient.lookup`), so chat goes on.
The ack is sent once the broker has confirmed the publication, but the connection's next frame
does not wait for that confirm: several of its messages are in flight at once, published in the
order sent, acknowledged in that order (`replies.py`). A retry of a message this gateway
published without a confirm publishes that same message again (its first stamp), so the room
sees it once and the ack is the message the store keeps.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

import orjson

from roomcast.shared import topics
from roomcast.shared.bus import BusUnavailableError, trace
from roomcast.shared.models import ChatMessage
from roomcast.shared.topics import Header

from ..connection import Connection
from ..protocol import ChatData, ProtocolError, event_frame
from ..relay import Seen
from ..replies import Confirming
from .guards import joined, own, within

if TYPE_CHECKING:
    from ..gateway import ChatGateway


async def handle(
    gw: ChatGateway, conn: Connection, data: ChatData
) -> dict[str, object] | Confirming:
    received = trace.now() if trace.ENABLED else None
    joined(gw, conn, data.room, "writing")
    own(conn, data.username)
    await gw.moderation.refuse_muted(conn, data.room)
    if data.id is not None:
        seen = gw.recent.get(data.room, data.id)
        stored = await _stored(gw, data.room, data.id, seen)
        if stored is not None:
            _check_author(stored, data)
            return stored
        if seen is not None:  # published here, never confirmed: the same message once more
            payload = _data(seen)
            _check_author(payload, data)
            within(gw.chat_budget(conn), gw.settings.rate_per_second, "messages")
            seen.origin = conn.id
            return _publishing(gw, conn, data.room, data.id, seen, payload, received)
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
    seen = Seen(uuid.uuid4().hex[:16], frame, relayed=False, origin=conn.id, pending=True)
    gw.recent.remember(data.room, message.id, seen)
    return _publishing(gw, conn, data.room, message.id, seen, payload, received)


def _publishing(
    gw: ChatGateway,
    conn: Connection,
    room: str,
    message_id: str,
    seen: Seen,
    data: dict[str, object],
    received: str | None = None,
) -> Confirming:
    """Start the publish now (frames are handled in order, so publishes start in order) and let
    the ack wait for its confirm, so the connection's next frame need not (`replies.py`)."""
    confirm = gw.spawn(
        publish(
            gw,
            room,
            message_id,
            seen,
            origin=conn.id,
            author=conn.session_hash,
            received=received,
        )
    )
    return Confirming(confirm, data)


async def publish(
    gw: ChatGateway,
    room: str,
    message_id: str,
    seen: Seen,
    *,
    origin: str,
    author: str | None,
    received: str | None = None,
) -> None:
    """Publish and wait for the broker's confirm. Unconfirmed, the message stays `pending` in
    memory: the room may have it already, so a retry sends this same publication again, which
    the relays (here and elsewhere) drop where it was delivered. `origin` is the sending
    connection (it does not get its own message back), `author` the identity stored with it;
    `received`, when stages are traced, when the frame was taken (`bus.trace`)."""
    headers = {
        Header.ORIGIN: origin,
        Header.MESSAGE_ID: message_id,
        Header.PUBLICATION: seen.publication,
        Header.SENT_AT: f"{time.time():.6f}",
        Header.AUTHOR: author or "",
    }
    if received is not None:
        headers[Header.TRACE_RECEIVED] = received
    try:
        async with asyncio.timeout(gw.settings.publish_timeout):
            await gw.bus.publish(
                topics.room_event(room, "updateChat"),
                seen.frame.encode(),
                headers=headers,
                persistent=True,
            )
    except (BusUnavailableError, TimeoutError) as exc:
        raise BusUnavailableError("message not confirmed by the broker") from exc
    seen.pending = False


def _check_author(message: dict[str, object], data: ChatData) -> None:
    if message.get("username") != data.username:
        raise ProtocolError("invalid", f"id {data.id!r} belongs to another message")


def _data(seen: Seen) -> dict[str, object]:
    data: dict[str, object] = orjson.loads(seen.frame)["data"]
    return data


async def _stored(
    gw: ChatGateway, room: str, message_id: str, seen: Seen | None
) -> dict[str, object] | None:
    """The message known under this id: from this gateway's memory when the broker confirmed
    it (or delivered it from elsewhere), else from the store."""
    if seen is not None and not seen.pending:
        return _data(seen)
    try:
        stored = await gw.history.lookup(room, message_id)
    except BusUnavailableError:
        # History is down: chat goes on (2.2). The store keeps the first message of an id, so a
        # clash is only possible while history is away; the lookup is back when it is.
        return None
    return stored.wire() if stored is not None else None
