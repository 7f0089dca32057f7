"""`newRoom`: invite another user to a private room; presence decides and delivers it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..connection import Connection
from ..protocol import NewRoomData
from .guards import joined, within

if TYPE_CHECKING:
    from ..gateway import ChatGateway


async def handle(gw: ChatGateway, conn: Connection, data: NewRoomData) -> dict[str, object]:
    joined(gw, conn, data.room, "inviting")
    within(conn.limiters.invites, gw.settings.invite_per_second, "invitations")
    assert conn.username is not None and conn.session_hash is not None  # set by its first join
    result = await gw.presence.invite(
        conn.id, conn.username, conn.session_hash, data.username2, data.room
    )
    # The room is private from now on: the inviter's members joined it while it was public
    # (seen receipts, PROTOCOL.md 2.3, go only to private rooms).
    for member in gw.membership.members(data.room):
        if member.conn.username == conn.username:
            member.private = True
    return result
