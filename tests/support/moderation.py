"""What the moderation and backend API tests share: a room made private before anyone joins
it, and a look into captured log lines."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from roomcast.shared.sessions import session_hash
from roomcast.shared.store.base import RoomMember, RoomStore

from .chat_client import ChatClient


async def private_pair(
    connect: Callable[[], Awaitable[ChatClient]], rooms: RoomStore, room: str
) -> tuple[ChatClient, ChatClient]:
    """alice and bob in main, `room` private to them in the store; neither has joined it."""
    alice, bob = await connect(), await connect()
    await alice.join("alice")
    await bob.join("bob")
    assert alice.session is not None and bob.session is not None
    pair = (
        RoomMember("alice", session_hash(alice.session)),
        RoomMember("bob", session_hash(bob.session)),
    )
    await rooms.make_private(room, pair)
    return alice, bob


def logged(logs: list[dict[str, object]], event: str, **fields: object) -> int:
    """How many captured lines are `event` with these fields."""
    return sum(
        line["event"] == event and all(line.get(k) == v for k, v in fields.items()) for line in logs
    )
