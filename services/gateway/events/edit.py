"""`editChat`: the author replaces a message's body (2.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..connection import Connection
from ..protocol import EditData
from . import changes
from .guards import joined, within

if TYPE_CHECKING:
    from ..gateway import ChatGateway


async def handle(gw: ChatGateway, conn: Connection, data: EditData) -> dict[str, object]:
    joined(gw, conn, data.room, "editing")
    within(gw.chat_budget(conn), gw.settings.rate_per_second, "messages")
    change = changes.request(gw, conn, "edit", data.id, body=data.body.strip())
    return await changes.apply(gw, conn, data.room, "editChat", change)
