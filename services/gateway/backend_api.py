"""The application's backend API (PROTOCOL.md 2.4): post to a room, disconnect a user, ban and
mute, with `Authorization: Bearer <ROOMCAST_API_KEY>` (keys and budgets: apikeys.py).

A request without a key, or with a wrong one, is 401 `unauthorized` (logged, at most a few
lines per 10 s); past its key's budget 429 `rate_limited`. With no key set every call is 401.

Bans and mutes go to presence like an owner's events (roomcast.gateway.moderation); a message
is published like a client's `updateChat` (events/chat.py), its author the backend, so no
user's session can edit it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar, cast

import structlog
from pydantic import BaseModel, Field
from quart import Blueprint, Response
from quart_schema import (
    HttpSecurityScheme,
    document_headers,
    security_scheme,
    validate_request,
    validate_response,
)
from quart_schema.extension import SecuritySchemeInput

from roomcast.shared.models import CLIENT_ID_RE, ChatMessage, is_valid_name
from roomcast.shared.moderation import BACKEND, MAX_MUTE_SECONDS, Action

from .api import ApiError, WireMessage, _gateway
from .apikeys import require_key
from .events import chat
from .protocol import ProtocolError, event_frame
from .relay import Seen

log = structlog.get_logger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

backend_api = Blueprint("backend_api", __name__, url_prefix="/api")

SCHEME = "backendKey"
SECURITY_SCHEMES: dict[str, SecuritySchemeInput] = {
    SCHEME: HttpSecurityScheme(scheme="bearer", bearer_format="ROOMCAST_API_KEY")
}
_SECURED = security_scheme([{SCHEME: []}])
AUTHOR = "backend:api"  # the author identity stored with its messages: no session's hash


@backend_api.before_request
async def _authorize() -> None:
    require_key()  # before the body is read or validated: a stranger learns nothing


def _name(value: str, what: str) -> str:
    limits = _gateway().settings
    chars = limits.max_username_chars if what == "username" else limits.max_room_chars
    if not is_valid_name(value, chars):
        raise ProtocolError("invalid", f"{what} must be 1 to {chars} letters, digits, '_' or '-'")
    return value


class PostMessage(BaseModel):
    username: str = Field(description="Who the message is from (any valid username).")
    body: str = Field(description="1 to ROOMCAST_MAX_BODY_CHARS characters after trimming.")
    id: str | None = Field(
        None, description="8 to 64 of A-Z a-z 0-9 _ -: a repeat answers 200 with the stored one."
    )


class UserRef(BaseModel):
    username: str


class MuteRequest(BaseModel):
    username: str
    seconds: int = Field(ge=1, le=MAX_MUTE_SECONDS, description="How long the mute lasts.")


class KeyHeaders(BaseModel):
    authorization: str = Field(description="`Bearer <API key>`.")


def _secured(route: F) -> F:
    """The key scheme, its header and the error answers every backend route shares."""
    for status in (400, 401, 429, 503):
        route = validate_response(ApiError, status)(route)
    return document_headers(KeyHeaders)(_SECURED(route))


@backend_api.after_request
async def _challenge(response: Response) -> Response:
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="roomcast backend API"'
    elif response.status_code == 429:
        response.headers["Retry-After"] = "1"
    return response


@backend_api.post("/rooms/<room>/messages")
@_secured
@validate_request(PostMessage)
@validate_response(WireMessage, 201)
@validate_response(WireMessage, 200)
async def post_message(room: str, data: PostMessage) -> tuple[WireMessage, int]:
    """Post a message to the room as `username` (stored, sent as `updateChat`): 201 with it,
    or 200 with the stored message when its `id` was posted before."""
    gw = _gateway()
    _name(room, "room")
    _name(data.username, "username")
    body = data.body.strip()
    if not body or len(body) > gw.settings.max_body_chars:
        raise ProtocolError(
            "invalid", f"body must be 1 to {gw.settings.max_body_chars} characters after trimming"
        )
    if data.id is not None:
        if not CLIENT_ID_RE.fullmatch(data.id):
            raise ProtocolError("invalid", "id must be 8 to 64 characters of A-Z a-z 0-9 _ -")
        stored = await chat._stored(gw, room, data.id, gw.recent.get(room, data.id))
        if stored is not None:
            if stored.get("username") != data.username:
                raise ProtocolError("invalid", f"id {data.id!r} belongs to another message")
            return cast(WireMessage, stored), 200
    message = ChatMessage(
        id=data.id or uuid.uuid4().hex,
        username=data.username,
        body=body,
        time=int(time.time() * 1000),
        room=room,
        rev=gw.revs.next(),
    )
    frame = event_frame("updateChat", message.wire(), room=room)
    seen = Seen(uuid.uuid4().hex[:16], frame, relayed=False, pending=True)
    gw.recent.remember(room, message.id, seen)
    await chat.publish(gw, room, message.id, seen, origin=BACKEND, author=AUTHOR)
    log.info("backend posted", room=room, username=data.username, id=message.id)
    return cast(WireMessage, message.wire()), 201


@backend_api.post("/users/<username>/disconnect")
@_secured
async def disconnect(username: str) -> Response:
    """Close every connection of the user, on every gateway, with 4003."""
    await _gateway().moderation.disconnect_everywhere(_name(username, "username"))
    log.info("backend disconnected a user", username=username)
    return Response(status=204)


@backend_api.post("/rooms/<room>/bans")
@_secured
@validate_request(UserRef)
async def ban(room: str, data: UserRef) -> Response:
    """Ban the user from the room: its connections leave it (`kicked`), later joins are
    refused `banned`."""
    return await _moderate("ban", room, data.username)


@backend_api.delete("/rooms/<room>/bans/<username>")
@_secured
async def unban(room: str, username: str) -> Response:
    """Let the user join the room again."""
    return await _moderate("unban", room, username)


@backend_api.post("/rooms/<room>/mutes")
@_secured
@validate_request(MuteRequest)
async def mute(room: str, data: MuteRequest) -> Response:
    """Refuse the user's `updateChat`, `userTyping` and `react` in the room (`muted`) for
    `seconds`."""
    return await _moderate("mute", room, data.username, data.seconds)


@backend_api.delete("/rooms/<room>/mutes/<username>")
@_secured
async def unmute(room: str, username: str) -> Response:
    """End the user's mute in the room."""
    return await _moderate("unmute", room, username)


async def _moderate(
    action: Action, room: str, username: str, seconds: int | None = None
) -> Response:
    await _gateway().moderation.act_for_backend(
        action, _name(room, "room"), _name(username, "username"), seconds
    )
    return Response(status=204)
