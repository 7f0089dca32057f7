"""`mute`, `unmute`, `kick`, `ban`, `unban` (2.4): what a room's owner or a moderator does to a
user of the room. Presence judges and stores each, then every gateway hears of it
(roomcast.gateway.moderation); anyone else is refused `forbidden`. They spend the user's chat
budget, so a flood of them is `rate_limited` like a flood of messages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from roomcast.shared.moderation import Action

from ..connection import Connection
from ..protocol import ModerateData, MuteData
from .guards import within

if TYPE_CHECKING:
    from ..gateway import ChatGateway

Handle = Callable[["ChatGateway", Connection, ModerateData], Awaitable[dict[str, object]]]


def _handler(action: Action) -> Handle:
    async def handle(gw: ChatGateway, conn: Connection, data: ModerateData) -> dict[str, object]:
        within(gw.chat_budget(conn), gw.settings.rate_per_second, "messages")
        seconds = data.seconds if isinstance(data, MuteData) else None
        return await gw.moderation.act(conn, action, data.room, data.username, seconds)

    handle.__name__ = action
    return handle


mute = _handler("mute")
unmute = _handler("unmute")
kick = _handler("kick")
ban = _handler("ban")
unban = _handler("unban")
