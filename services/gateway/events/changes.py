"""What `editChat`, `deleteChat` and `react` share: the change is judged and applied by history
(through its ordered queue, so it lands after every message published before it), then the
message in its new state goes to every other connection in the room.

History being down refuses the change (`unavailable`): a change cannot be judged without the
message it changes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from roomcast.shared import rpc, topics
from roomcast.shared.models import ChatMessage
from roomcast.shared.topics import Header

from ..connection import Connection
from ..protocol import ServerEvent, event_frame

if TYPE_CHECKING:
    from ..gateway import ChatGateway


def request(
    gw: ChatGateway, conn: Connection, op: str, message_id: str, **fields: object
) -> rpc.ChangeRequest:
    """A change request on behalf of the connection's user, with a proposed rev."""
    assert conn.username is not None and conn.session_hash is not None  # set by its first join
    return rpc.ChangeRequest.model_validate(
        {
            "op": op,
            "id": message_id,
            "author": conn.session_hash,
            "username": conn.username,
            "rev": gw.revs.next(),
            "at": int(time.time() * 1000),
            **fields,
        }
    )


async def apply(
    gw: ChatGateway, conn: Connection, room: str, event: ServerEvent, change: rpc.ChangeRequest
) -> dict[str, object]:
    """Have history apply the change, tell the room, and return the ack data."""
    result = await gw.history.change(room, change)
    message = ChatMessage.model_validate(result["message"])
    data = message.wire()
    await gw.bus.publish(
        topics.room_event(room, event),
        event_frame(event, data, room=room).encode(),
        headers={Header.ORIGIN: conn.id, Header.SENT_AT: f"{time.time():.6f}"},
    )
    return data
