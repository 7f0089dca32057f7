"""Joins into a served room share one encoded `msgHistory` (`RoomCache`): a storm's hundred
joins of a room would otherwise each copy and encode the same hundred messages. The shared
frame follows every change of the room: a new message, an edit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from roomcast.gateway import roomcache
from tests.support.chat_client import ChatClient

pytestmark = pytest.mark.unit


def count_encodings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the newest pages the room cache encodes."""
    sizes: list[int] = []
    original = roomcache.shown

    def counted(room: str, messages: list[dict[str, object]], *args: Any) -> Any:
        sizes.append(len(messages))
        return original(room, messages, *args)

    monkeypatch.setattr(roomcache, "shown", counted)
    return sizes


def history_of(client: ChatClient) -> list[tuple[str, str]]:
    frame = next(f for f in client.frames if f["event"] == "msgHistory")
    return [(m["id"], m["body"]) for m in frame["data"]]


@pytest.mark.settings(rate_per_second=100, rate_burst=100)
async def test_joins_share_one_encoded_history_until_the_room_changes(
    server, connect, monkeypatch
) -> None:
    alice: ChatClient = await connect()
    await alice.join("alice")
    sent = [await alice.say("main", f"hello {i}") for i in range(3)]
    encoded = count_encodings(monkeypatch)
    joiners: list[ChatClient] = [await connect() for _ in range(10)]
    await asyncio.gather(*(c.join(f"user{i}") for i, c in enumerate(joiners)))
    expected = [(m["id"], f"hello {i}") for i, m in enumerate(sent)]
    assert all(history_of(c) == expected for c in joiners)
    assert encoded == [3]  # once for the ten joins
    await alice.request("editChat", {"room": "main", "id": sent[0]["id"], "body": "edited"})
    fourth = await alice.say("main", "hello 3")
    await joiners[0].wait_for(
        lambda f: f["event"] == "updateChat" and f["data"]["body"] == "hello 3"
    )
    late: ChatClient = await connect()
    await late.join("late")
    assert history_of(late) == [
        (sent[0]["id"], "edited"),
        *expected[1:],
        (fourth["id"], "hello 3"),
    ]
    assert encoded == [3, 4]
