"""`userLeave`: the connection leaves a room; presence tells the others."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..connection import Connection
from ..protocol import LeaveData
from .guards import joined, within

if TYPE_CHECKING:
    from ..gateway import ChatGateway


async def handle(gw: ChatGateway, conn: Connection, data: LeaveData) -> dict[str, object]:
    member = joined(gw, conn, data.room, "leaving")
    within(conn.limiters.joins, gw.settings.join_per_second, "joins and leaves")
    await gw.membership.leave(member)
    if member.admitted:
        await gw.presence.leave(conn.id, data.room, conn.username)
    return {"room": data.room}
