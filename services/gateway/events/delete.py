"""`deleteChat`: the author takes a message back, or the room's owner or a moderator takes it
down (2.4); a tombstone keeps its place (2.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..connection import Connection
from ..protocol import DeleteData
from . import changes
from .guards import joined, within

if TYPE_CHECKING:
    from ..gateway import ChatGateway


async def handle(gw: ChatGateway, conn: Connection, data: DeleteData) -> dict[str, object]:
    joined(gw, conn, data.room, "deleting")
    within(gw.chat_budget(conn), gw.settings.rate_per_second, "messages")
    moderator = await gw.moderation.moderates(conn, data.room)
    change = changes.request(gw, conn, "delete", data.id, moderator=moderator)
    return await changes.apply(gw, conn, data.room, "deleteChat", change)
