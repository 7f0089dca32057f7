"""The checks most events start with, each raising the protocol's error for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..connection import Connection
from ..membership import Member
from ..protocol import ProtocolError
from ..ratelimit import TokenBucket

if TYPE_CHECKING:
    from ..gateway import ChatGateway


def own(conn: Connection, username: str) -> None:
    """A payload's username must be the connection's own."""
    if conn.username is not None and username != conn.username:
        raise ProtocolError(
            "username_mismatch", f"this connection is {conn.username!r}, not {username!r}"
        )


def joined(gw: ChatGateway, conn: Connection, room: str, action: str) -> Member:
    member = gw.membership.member(conn, room)
    if member is None:
        raise ProtocolError("not_joined", f"join room {room!r} before {action} in it")
    return member


def within(bucket: TokenBucket, rate: float, what: str) -> None:
    if not bucket.take():
        raise ProtocolError(
            "rate_limited", f"at most {rate:g} {what} per second; this one was not done"
        )
