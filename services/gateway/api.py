"""The gateway's HTTP API: a room's history page by page, and its active users.

Private rooms answer only to `Authorization: Bearer SESSION` with the session of one of their two
members, or a signed-in member's token; under `ROOMCAST_AUTH=token` every room answers only to
a token (`auth/bearer.py`). Every error is `{"code", "message"}` with the WebSocket protocol's codes.
"""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired, cast

from pydantic import BaseModel, Field, PlainSerializer
from quart import Blueprint, current_app, request
from quart_schema import document_headers, validate_querystring, validate_response
from typing_extensions import TypedDict  # pydantic needs it, not typing.TypedDict, on 3.11

from roomcast.shared import rpc
from roomcast.shared.models import ChatMessage
from roomcast.shared.names import InvalidNameError, normalise_room

from .apikeys import backend_caller
from .auth.bearer import bearer_caller
from .gateway import ChatGateway
from .protocol import ProtocolError

api = Blueprint("api", __name__, url_prefix="/api")


class MessagesQuery(BaseModel):
    limit: int = Field(50, ge=1, le=200, description="How many messages, 1 to 200.")
    before: str | None = Field(None, max_length=128, description="Page back from this message id.")


class WireMessage(TypedDict):
    """A message in its current state as every client gets it (`ChatMessage.wire()`, PROTOCOL.md
    2.3): the optional fields are left out when unset, never null; a tombstone keeps its place
    with `deleted` and an empty body."""

    id: str
    username: str
    body: str
    time: int
    room: str
    rev: Annotated[int, Field(description="The room's rev of the message's last change.")]
    edited: NotRequired[Annotated[int, Field(description="Time of the last edit (ms).")]]
    deleted: NotRequired[Annotated[Literal[True], Field(description='A tombstone: body "".')]]
    reactions: NotRequired[
        Annotated[dict[str, list[str]], Field(description="Emoji to the sorted usernames.")]
    ]


def _wire(message: ChatMessage) -> WireMessage:
    return cast(WireMessage, message.wire())


class MessagesPage(BaseModel):
    messages: list[Annotated[ChatMessage, PlainSerializer(_wire, return_type=WireMessage)]]


class UsersPage(BaseModel):
    users: list[str]


class ApiError(BaseModel):
    code: str
    message: str


class AuthHeaders(BaseModel):
    authorization: str | None = Field(
        None,
        description=(
            "`Bearer SESSION` or `Bearer TOKEN` (a member's) or `Bearer <API key>`: for a "
            "private room; under ROOMCAST_AUTH=token, a token (or the API key) for every room."
        ),
    )


def _gateway() -> ChatGateway:
    gateway: ChatGateway = current_app.extensions["roomcast.gateway"]
    return gateway


def _room(raw: str) -> str:
    """The room's NFKC normal form (as the WebSocket protocol has it), or 400 saying why not."""
    try:
        return normalise_room(raw, _gateway().settings)
    except InvalidNameError as exc:
        raise ProtocolError("invalid", str(exc)) from None


async def _users(room: str) -> rpc.UsersReply:
    """Presence's view of the room, and whether the caller may see it."""
    gateway = _gateway()
    if backend_caller():  # the application's backend (2.4): any room
        return await gateway.presence.users(room, None, None, backend=True)
    caller = await bearer_caller(gateway, request.headers.get("Authorization", ""), room)
    reply = await gateway.presence.users(room, caller.username, caller.key)
    if not reply.allowed:
        raise ProtocolError("room_private", f"room {room!r} is private; send a member's session")
    return reply


@api.get("/rooms/<room>/messages")
@document_headers(AuthHeaders)
@validate_querystring(MessagesQuery)
@validate_response(MessagesPage, 200)
@validate_response(ApiError, 400)
@validate_response(ApiError, 401)
@validate_response(ApiError, 403)
@validate_response(ApiError, 503)
async def room_messages(room: str, query_args: MessagesQuery) -> MessagesPage:
    """A page of the room's history, oldest first; page back with `before`."""
    gateway = _gateway()
    room = _room(room)
    await _users(room)
    reply = await gateway.history.before(room, query_args.before, query_args.limit)
    if not reply.known:
        raise ProtocolError("invalid", f"no message {query_args.before!r} in room {room!r}")
    return MessagesPage(messages=reply.messages)


@api.get("/rooms/<room>/users")
@document_headers(AuthHeaders)
@validate_response(UsersPage, 200)
@validate_response(ApiError, 400)
@validate_response(ApiError, 401)
@validate_response(ApiError, 403)
@validate_response(ApiError, 503)
async def room_users(room: str) -> UsersPage:
    """The users with at least one live connection in the room, sorted."""
    return UsersPage(users=(await _users(_room(room))).users)
