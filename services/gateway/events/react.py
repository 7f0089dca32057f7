"""`react`: anyone in the room adds or removes an emoji on a message (2.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..connection import Connection
from ..protocol import ReactData
from . import changes
from .guards import joined, within

if TYPE_CHECKING:
    from ..gateway import ChatGateway


async def handle(gw: ChatGateway, conn: Connection, data: ReactData) -> dict[str, object]:
    joined(gw, conn, data.room, "reacting")
    await gw.moderation.refuse_muted(conn, data.room)
    within(gw.chat_budget(conn), gw.settings.rate_per_second, "messages")
    change = changes.request(gw, conn, "react", data.id, emoji=data.emoji, add=data.add)
    return await changes.apply(gw, conn, data.room, "react", change)
