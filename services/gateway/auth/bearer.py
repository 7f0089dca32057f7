"""Who reads a room over HTTP with `Authorization: Bearer ...` (PROTOCOL.md 2.4): an anonymous
user's session, a signed-in user's token, or nobody.

Under `ROOMCAST_AUTH=token` the HTTP reads are for signed-in users too, as joins are: without a
token that verifies the answer is 401 `unauthorized`, so no room's history is readable by a
caller the application never signed in. A token's `rooms` claim bounds what it reads as it bounds
what it joins (403 `forbidden`). The backend's API key is judged before this, by `apikeys`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from roomcast.shared.errors import ProtocolError
from roomcast.shared.sessions import session_hash

from .signin import SIGN_INS
from .tokens import TokenError

if TYPE_CHECKING:
    from ..gateway import ChatGateway

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Caller:
    """The caller as presence judges a private room: a username and its identity key (a
    session's hash or a subject's key), or neither."""

    username: str | None = None
    key: str | None = None


async def bearer_caller(gw: ChatGateway, header: str, room: str) -> Caller:
    credential = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    token_mode = gw.settings.auth == "token"
    if credential and not token_mode:
        username = gw.signer.username_of(credential)
        if username is not None:
            return Caller(username, session_hash(credential))
    if not credential or not gw.tokens.configured:
        if token_mode:
            raise ProtocolError(
                "unauthorized", "this server answers signed-in users: send 'Bearer TOKEN'"
            )
        return Caller()
    try:
        identity = await gw.tokens.verify(credential)
    except TokenError as exc:
        if not token_mode:
            return Caller()  # not a member's credential: private rooms say so
        SIGN_INS.labels("refused").inc()
        log.info("token refused", reason=str(exc), via="http")
        raise ProtocolError("unauthorized", str(exc)) from None
    if not identity.may_join(room):
        log.info(
            "room outside the token's rooms claim refused",
            user=identity.username,
            room=room,
            via="http",
        )
        raise ProtocolError("forbidden", f"your token does not let you read room {room!r}")
    return Caller(identity.username, identity.key)
