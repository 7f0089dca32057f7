"""One handler per client event, in one table: a new event is a new module here.

A handler gets the gateway, the connection and the validated payload, and returns the `ack`
data (or, for a publish, the confirm it waits for: `replies.Confirming`); it refuses by raising
`ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..connection import Connection
from ..protocol import PAYLOADS
from ..replies import Confirming
from . import chat, delete, edit, invite, join, leave, mark_read, moderation, react, refresh, typing

if TYPE_CHECKING:
    from ..gateway import ChatGateway

# the ack data, or (`updateChat`) the ack data once its publish is confirmed
Handler = Callable[["ChatGateway", Connection, Any], Awaitable[dict[str, object] | Confirming]]

HANDLERS: dict[str, Handler] = {
    "userJoin": join.handle,
    "userTyping": typing.handle,
    "updateChat": chat.handle,
    "newRoom": invite.handle,
    "userLeave": leave.handle,
    "editChat": edit.handle,
    "deleteChat": delete.handle,
    "react": react.handle,
    "markRead": mark_read.handle,
    "mute": moderation.mute,
    "unmute": moderation.unmute,
    "kick": moderation.kick,
    "ban": moderation.ban,
    "unban": moderation.unban,
    "refresh": refresh.handle,
}

if HANDLERS.keys() != PAYLOADS.keys():  # pragma: no cover - a wiring mistake, caught at import
    raise RuntimeError(f"events without a handler or payload: {HANDLERS.keys() ^ PAYLOADS.keys()}")
