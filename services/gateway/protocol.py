"""The wire format of PROTOCOL.md, both directions: parse and validate a client's frame, and
encode what the server sends.

No I/O: client text becomes a typed `ClientFrame` or a `ProtocolError` carrying the error code,
a plain-words message and the frame's `ref` when one could be read; server events are encoded
once, as text every socket of a room can share. Usernames and rooms leave here in their NFKC
normal form (roomcast.shared.names), so everything after compares, routes and stores that one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from roomcast.shared.config import Limits
from roomcast.shared.errors import ErrorCode, ProtocolError
from roomcast.shared.frames import encode_event, error_data
from roomcast.shared.models import CLIENT_ID_RE
from roomcast.shared.moderation import MAX_MUTE_SECONDS
from roomcast.shared.names import InvalidNameError, normalise_room, normalise_username

MAX_REF_CHARS = 64

ServerEvent = Literal[
    "msgHistory",
    "activeUsers",
    "userJoin",
    "userLeave",
    "userTyping",
    "updateChat",
    "newRoom",
    "editChat",
    "deleteChat",
    "react",
    "readMarker",
    "kicked",
    "ack",
    "error",
]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class JoinData(_Payload):
    username: StrictStr | None = None  # or a token that names the user (2.4)
    room: StrictStr
    session: StrictStr | None = None
    token: StrictStr | None = None
    since: StrictStr | None = None
    since_rev: StrictInt | None = Field(None, alias="sinceRev", ge=0)


class TypingData(_Payload):
    username: StrictStr
    room: StrictStr


class ChatData(_Payload):
    username: StrictStr
    room: StrictStr
    body: StrictStr
    time: StrictInt | StrictFloat | None = None
    id: StrictStr | None = None


class NewRoomData(_Payload):
    username2: StrictStr
    room: StrictStr


class LeaveData(_Payload):
    room: StrictStr


class EditData(_Payload):
    room: StrictStr
    id: StrictStr
    body: StrictStr


class DeleteData(_Payload):
    room: StrictStr
    id: StrictStr


class ReactData(_Payload):
    room: StrictStr
    id: StrictStr
    emoji: StrictStr
    add: StrictBool


class MarkReadData(_Payload):
    room: StrictStr
    id: StrictStr


class ModerateData(_Payload):
    """`unmute`, `kick`, `ban`, `unban` (2.4): the room and the user it is done to."""

    room: StrictStr
    username: StrictStr


class MuteData(ModerateData):
    seconds: StrictInt = Field(ge=1, le=MAX_MUTE_SECONDS)


class RefreshData(_Payload):
    token: StrictStr


Payload = (
    JoinData
    | TypingData
    | ChatData
    | NewRoomData
    | LeaveData
    | EditData
    | DeleteData
    | ReactData
    | MarkReadData
    | ModerateData
    | RefreshData
)

PAYLOADS: dict[str, type[Payload]] = {
    "userJoin": JoinData,
    "userTyping": TypingData,
    "updateChat": ChatData,
    "newRoom": NewRoomData,
    "userLeave": LeaveData,
    "editChat": EditData,
    "deleteChat": DeleteData,
    "react": ReactData,
    "markRead": MarkReadData,
    "mute": MuteData,
    "unmute": ModerateData,
    "kick": ModerateData,
    "ban": ModerateData,
    "unban": ModerateData,
    "refresh": RefreshData,
}
MAX_ID_CHARS = 128
MAX_EMOJI_CHARS = 32


@dataclass(frozen=True, slots=True)
class ClientFrame:
    event: str
    data: Payload
    ref: str | None


def parse_frame(text: str, limits: Limits) -> ClientFrame:
    """Parse one client text frame, or raise `ProtocolError` saying what is wrong."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("bad_json", "frame is not valid JSON") from None
    if not isinstance(raw, dict):
        raise ProtocolError("bad_frame", f"frame must be a JSON object, not {_kind(raw)}")
    ref = _ref(raw.get("ref"))
    event = raw.get("event")
    if not isinstance(event, str):
        raise ProtocolError("bad_frame", "frame needs a string 'event'", ref)
    model = PAYLOADS.get(event)
    if model is None:
        known = ", ".join(PAYLOADS)
        raise ProtocolError("bad_event", f"unknown event {event[:40]!r}; known: {known}", ref)
    data = raw.get("data")
    if not isinstance(data, dict):
        raise ProtocolError("invalid", f"'{event}' needs an object 'data', not {_kind(data)}", ref)
    try:
        payload = model.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError("invalid", _describe(event, exc), ref) from None
    payload = _normal_names(payload, limits, ref)
    _check_limits(payload, limits, ref)
    return ClientFrame(event, payload, ref)


def _ref(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_REF_CHARS:
        raise ProtocolError(
            "bad_frame", f"'ref' must be a string of 1 to {MAX_REF_CHARS} characters"
        )
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def _describe(event: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "data"
    if first["type"] == "missing":
        return f"'{event}' data needs '{field}'"
    return f"'{event}' data field '{field}': {first['msg'].lower()}"


_NAMES: tuple[tuple[str, Callable[[object, Limits], str]], ...] = (
    ("username", normalise_username),
    ("username2", normalise_username),
    ("room", normalise_room),
)


def _normal_names(payload: Payload, limits: Limits, ref: str | None) -> Payload:
    """The payload with every name in its NFKC normal form, the one that is routed, stored,
    shown and compared (2.2); a name that has none is `invalid`, with what is wrong with it."""
    normal: dict[str, str] = {}
    for field, normalise in _NAMES:
        raw = getattr(payload, field, None)
        if raw is None:
            continue
        try:
            name = normalise(raw, limits)
        except InvalidNameError as exc:
            message = str(exc) if field in ("username", "room") else f"{field}: {exc}"
            raise ProtocolError("invalid", message, ref) from None
        if name != raw:
            normal[field] = name
    return payload.model_copy(update=normal) if normal else payload


def _check_limits(payload: Payload, limits: Limits, ref: str | None) -> None:
    if isinstance(payload, RefreshData):  # no names: the token is judged by its verifier
        return
    if isinstance(payload, ChatData | EditData):
        _check_body(payload.body, limits, ref)
    if isinstance(payload, ChatData):
        if payload.id is not None and not CLIENT_ID_RE.fullmatch(payload.id):
            raise ProtocolError("invalid", "id must be 8 to 64 characters of A-Z a-z 0-9 _ -", ref)
    elif isinstance(payload, EditData | DeleteData | ReactData | MarkReadData) and not (
        0 < len(payload.id) <= MAX_ID_CHARS
    ):
        raise ProtocolError("invalid", f"id must be a message id (1 to {MAX_ID_CHARS})", ref)
    if isinstance(payload, ReactData):
        emoji = payload.emoji
        if (
            not 0 < len(emoji) <= MAX_EMOJI_CHARS
            or not emoji.isprintable()
            or emoji != "".join(emoji.split())
        ):
            raise ProtocolError(
                "invalid", f"emoji must be 1 to {MAX_EMOJI_CHARS} visible characters", ref
            )
    if isinstance(payload, JoinData):
        if payload.token is not None and payload.session is not None:
            raise ProtocolError("invalid", "give 'token' or 'session', not both", ref)
        if payload.since is not None and not 0 < len(payload.since) <= MAX_ID_CHARS:
            raise ProtocolError("invalid", "since must be a message id", ref)
        if payload.since is not None and payload.since_rev is not None:
            raise ProtocolError("invalid", "give 'since' or 'sinceRev', not both", ref)


def _check_body(body: str, limits: Limits, ref: str | None) -> None:
    trimmed = body.strip()
    if not trimmed or len(trimmed) > limits.max_body_chars:
        raise ProtocolError(
            "invalid", f"body must be 1 to {limits.max_body_chars} characters after trimming", ref
        )


# server to client --------------------------------------------------------------------------
def event_frame(event: ServerEvent, data: Any, *, room: str | None = None) -> str:
    """A server event, room-scoped when `room` is given."""
    return encode_event(event, data, room=room)


def ack_frame(ref: str, data: Any) -> str:
    return encode_event("ack", data, ref=ref)


def error_frame(error: ProtocolError) -> str:
    return encode_event("error", error_data(error.code, error.message), ref=error.ref)


__all__ = [
    "PAYLOADS",
    "ChatData",
    "ClientFrame",
    "DeleteData",
    "EditData",
    "ErrorCode",
    "JoinData",
    "LeaveData",
    "MarkReadData",
    "ModerateData",
    "MuteData",
    "NewRoomData",
    "ProtocolError",
    "ReactData",
    "RefreshData",
    "ServerEvent",
    "TypingData",
    "ack_frame",
    "error_frame",
    "event_frame",
    "parse_frame",
]
