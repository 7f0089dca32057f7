"""`refresh`: a newer token for the connection's subject keeps the connection past the old
token's expiry (PROTOCOL.md 2.4). Another subject's token is `unauthorized`, another name
`username_mismatch`; the connection keeps its current token either way. The ack carries the
new expiry. Refreshes share the budget of joins and leaves: each costs a signature check."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..auth import signin
from ..connection import Connection
from ..protocol import ProtocolError, RefreshData
from .guards import within

if TYPE_CHECKING:
    from ..gateway import ChatGateway


async def handle(gw: ChatGateway, conn: Connection, data: RefreshData) -> dict[str, object]:
    current = conn.identity
    if current is None:
        raise ProtocolError(
            "unauthorized", "this connection is not signed in with a token; join with one first"
        )
    within(conn.limiters.joins, gw.settings.join_per_second, "joins, leaves and refreshes")
    identity = await signin.verified(gw, conn, data.token)
    signin.renew(conn, current, identity)
    return {"exp": identity.exp}
