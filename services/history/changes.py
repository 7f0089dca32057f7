"""History changes: `ChangeRequest`s (PROTOCOL.md 2.3) judged and applied by the store.

The store gives the changed message its rev and refuses with `ProtocolError`s (`not_found`,
`forbidden`, `invalid`); a request lacking a field its op needs is refused `invalid`. Replies:
`{"message": <wire message>}` for edit, delete and react; `{"id", "unread"}` for markRead.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from roomcast.shared import rpc
from roomcast.shared.errors import ProtocolError
from roomcast.shared.models import ChatMessage
from roomcast.shared.store.base import MessageStore

StoreChange = Callable[..., Awaitable[ChatMessage]]

# A message change: the store method that judges and applies it, and the request's fields it
# takes (under the same names). A field that may be None in a request but not here is required.
MESSAGE_CHANGES: dict[str, tuple[Callable[[MessageStore], StoreChange], tuple[str, ...]]] = {
    "edit": (lambda store: store.edit, ("author", "username", "body", "at", "rev")),
    "delete": (lambda store: store.delete, ("author", "username", "moderator", "rev")),
    "react": (lambda store: store.react, ("username", "emoji", "add", "rev")),
}


def _arguments(change: rpc.ChangeRequest, names: tuple[str, ...]) -> dict[str, Any]:
    values = {name: getattr(change, name) for name in names}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise ProtocolError("invalid", f"{change.op} needs {', '.join(missing)}")
    return values


async def _mark_read(
    store: MessageStore, room: str, change: rpc.ChangeRequest
) -> dict[str, object]:
    """The reader is the requester's identity (`author`): markers belong to it, not to a name."""
    marker = await store.mark_read(room, change.author, change.id)
    state = await store.read_state(room, change.author, change.username)
    return {"id": marker, "unread": state.unread}


def applied_now(clock: Callable[[], float] = time.time) -> int:
    """A rev above every rev proposed up to now (`RevClock`: milliseconds x 1000 plus a counter):
    the end of the current millisecond."""
    return int(clock() * 1000) * 1000 + 999


async def apply(
    store: MessageStore,
    room: str,
    change: rpc.ChangeRequest,
    *,
    clock: Callable[[], float] = time.time,
) -> dict[str, object]:
    """The reply data of a change; raises `ProtocolError` for a refusal and
    `StoreUnavailableError` when the store does not answer.

    The gateway proposed the change's rev when it was asked; messages published while the
    change waited in the queue proposed larger ones, and clients may have them live before the
    change's event. So the change gets a rev above every proposal made before it is applied:
    a client that recovers from the largest rev it saw still gets it (PROTOCOL.md 2.3)."""
    if change.op == "markRead":
        return await _mark_read(store, room, change)
    change = change.model_copy(update={"rev": max(change.rev, applied_now(clock))})
    method, names = MESSAGE_CHANGES[change.op]
    message = await method(store)(room, change.id, **_arguments(change, names))
    return {"message": message.wire()}
