"""History changes: `ChangeRequest`s (PROTOCOL.md 2.3) judged and applied by the store.

The store gives the changed message its rev and refuses with `ProtocolError`s (`not_found`,
`forbidden`, `invalid`); a request lacking a field its op needs is refused `invalid`. Replies:
`{"message": <wire message>}` for edit, delete and react; `{"id", "unread"}` for markRead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from roomcast.shared import rpc
from roomcast.shared.errors import ProtocolError
from roomcast.shared.store.base import MessageStore

Change = Callable[[MessageStore, str, rpc.ChangeRequest], Awaitable[dict[str, object]]]


def _needs(change: rpc.ChangeRequest, *fields: str) -> None:
    missing = [name for name in fields if getattr(change, name) is None]
    if missing:
        raise ProtocolError("invalid", f"{change.op} needs {', '.join(missing)}")


async def _edit(store: MessageStore, room: str, change: rpc.ChangeRequest) -> dict[str, object]:
    _needs(change, "body")
    assert change.body is not None
    message = await store.edit(
        room,
        change.id,
        author=change.author,
        username=change.username,
        body=change.body,
        at=change.at,
        rev=change.rev,
    )
    return {"message": message.wire()}


async def _delete(store: MessageStore, room: str, change: rpc.ChangeRequest) -> dict[str, object]:
    message = await store.delete(
        room,
        change.id,
        author=change.author,
        username=change.username,
        moderator=change.moderator,
        rev=change.rev,
    )
    return {"message": message.wire()}


async def _react(store: MessageStore, room: str, change: rpc.ChangeRequest) -> dict[str, object]:
    _needs(change, "emoji", "add")
    assert change.emoji is not None and change.add is not None
    message = await store.react(
        room,
        change.id,
        username=change.username,
        emoji=change.emoji,
        add=change.add,
        rev=change.rev,
    )
    return {"message": message.wire()}


async def _mark_read(
    store: MessageStore, room: str, change: rpc.ChangeRequest
) -> dict[str, object]:
    """The reader is the requester's identity (`author`): markers belong to it, not to a name."""
    marker = await store.mark_read(room, change.author, change.id)
    state = await store.read_state(room, change.author, change.username)
    return {"id": marker, "unread": state.unread}


CHANGES: dict[str, Change] = {
    "edit": _edit,
    "delete": _delete,
    "react": _react,
    "markRead": _mark_read,
}


async def apply(store: MessageStore, room: str, change: rpc.ChangeRequest) -> dict[str, object]:
    """The reply data of a change; raises `ProtocolError` for a refusal and
    `StoreUnavailableError` when the store does not answer."""
    return await CHANGES[change.op](store, room, change)
