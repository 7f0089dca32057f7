"""What a token does to a connection (PROTOCOL.md 2.4): whom a join signs in, a newer token for
the same subject, and the close at expiry.

A connection is anonymous (its first join had no token) or signed in (it had one), for good: a
signed-in connection's later joins may leave the token out, and a token on an anonymous one is
refused. Its identity is held until the token's `exp`; then the socket gets `error`
`unauthorized` and is closed with 4001, unless a newer token for the same `sub` came first.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog
from prometheus_client import Counter

from roomcast.shared.auth import Identity
from roomcast.shared.errors import ProtocolError

from ..connection import Connection
from ..metrics import ERRORS
from ..protocol import error_frame
from .tokens import TokenError

if TYPE_CHECKING:
    from ..gateway import ChatGateway

log = structlog.get_logger(__name__)

CLOSE_UNAUTHORIZED = 4001

SIGN_INS = Counter(
    "roomcast_gateway_sign_ins_total",
    "Tokens presented, by outcome (accepted, refused, refreshed, expired)",
    ["outcome"],
)


async def verified(gw: ChatGateway, conn: Connection, token: str) -> Identity:
    """The token's identity, or `unauthorized` saying why not (logged without the token)."""
    try:
        identity = await gw.tokens.verify(token)
    except TokenError as exc:
        SIGN_INS.labels("refused").inc()
        log.info("token refused", reason=str(exc), conn=conn.id)
        raise ProtocolError("unauthorized", str(exc)) from None
    SIGN_INS.labels("accepted").inc()
    return identity


async def joiner(gw: ChatGateway, conn: Connection, token: str | None) -> Identity | None:
    """Whom a `userJoin` signs in as; None for an anonymous join."""
    if token is None:
        if conn.identity is None and gw.settings.auth == "token":
            log.info("anonymous join refused: tokens required", conn=conn.id)
            raise ProtocolError("unauthorized", "this server needs a token to join: send 'token'")
        return conn.identity
    if conn.identity is None and conn.username is not None:
        log.info("token refused on an anonymous connection", conn=conn.id, user=conn.username)
        raise ProtocolError(
            "unauthorized", "this connection joined without a token; sign in on a new connection"
        )
    identity = await verified(gw, conn, token)
    if conn.identity is not None:
        renew(conn, conn.identity, identity)
    return identity


def may_join(identity: Identity, room: str) -> None:
    if not identity.may_join(room):
        log.info("room outside the token's rooms claim refused", user=identity.username, room=room)
        raise ProtocolError("forbidden", f"your token does not let you join room {room!r}")


def hold(conn: Connection, identity: Identity) -> None:
    """Sign the connection in until the token expires."""
    conn.sign_in(identity, _expired, time.time)


def renew(conn: Connection, current: Identity, identity: Identity) -> None:
    """Replace a signed-in connection's identity by a newer token's: same subject, same name."""
    if identity.sub != current.sub:
        SIGN_INS.labels("refused").inc()
        log.info("token of another subject refused", conn=conn.id, user=conn.username)
        raise ProtocolError("unauthorized", "the token is for another user than this connection's")
    if identity.username != conn.username:
        raise ProtocolError(
            "username_mismatch",
            f"this connection is {conn.username!r}; the token names {identity.username!r}",
        )
    hold(conn, identity)
    SIGN_INS.labels("refreshed").inc()
    log.info("token refreshed", conn=conn.id, user=conn.username, exp=identity.exp)


def _expired(conn: Connection) -> None:
    SIGN_INS.labels("expired").inc()
    ERRORS.labels("unauthorized").inc()
    log.info("token expired; connection closed", conn=conn.id, user=conn.username)
    error = ProtocolError("unauthorized", "your token expired; sign in again with a new one")
    conn.finish(error_frame(error), "error", CLOSE_UNAUTHORIZED)
