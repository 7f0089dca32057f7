"""A room's presence changes as presence publishes them (one message per room per publication,
one frame per line: presence/announcer.py), through the gateway's relay: every socket gets each
change as an event of its own, in order (one per frame without `batch=1`); a socket that joined
moments ago is not told what its `activeUsers` snapshot already shows; a line that is not a
change is dropped and logged, and the rest still go."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from roomcast.gateway import membership
from roomcast.presence import announcer
from roomcast.shared import topics
from roomcast.shared.bus import Message
from tests.support.chat_client import ChatClient
from tests.support.inprocess import Server

pytestmark = pytest.mark.unit


def change(event: Any, username: Any, room: str = "hall") -> bytes:
    return orjson.dumps(
        {"event": event, "room": room, "data": {"username": username, "room": room}}
    )


async def publish(server: Server, *lines: bytes, room: str = "hall") -> None:
    body = b"\n".join(lines)
    await server.system.bus.publish(topics.room_event(room, topics.PRESENCE_CHANGES), body)


def users_told(client: ChatClient) -> list[tuple[str, str]]:
    return [
        (f["event"], f["data"]["username"])
        for f in client.frames
        if f["event"] in ("userJoin", "userLeave")
    ]


async def test_each_change_of_a_message_is_an_event_of_its_own_in_order(
    connect, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(membership, "LISTED_SECONDS", 0.05)
    alice: ChatClient = await connect()
    carol: ChatClient = await connect(batch=True)
    await alice.join("alice", "hall")
    await carol.join("carol", "hall")
    await alice.users("hall", ["alice", "carol"])
    await asyncio.sleep(0.1)  # both past the moments after their joins
    before = len(alice.frames)
    await publish(
        server, change("userJoin", "dan"), change("userJoin", "erin"), change("userLeave", "dan")
    )
    await alice.users("hall", ["alice", "carol", "erin"])
    await carol.users("hall", ["alice", "carol", "erin"])
    told = [(f["event"], f["data"]["username"]) for f in alice.frames[before:]]
    assert told == [("userJoin", "dan"), ("userJoin", "erin"), ("userLeave", "dan")]
    assert users_told(carol)[-3:] == told


async def test_a_socket_that_just_joined_is_not_told_what_its_snapshot_shows(
    connect, server: Server
) -> None:
    alice: ChatClient = await connect()
    await alice.join("alice", "hall")
    bob: ChatClient = await connect()
    await bob.join("bob", "hall")
    assert bob.received("activeUsers", "hall")[-1]["data"] == ["alice", "bob"]
    # changes from before bob's snapshot, published after it (a paced room), then a new one
    await publish(server, change("userJoin", "alice"), change("userJoin", "bob"))
    await publish(server, change("userJoin", "frank"))
    await bob.users("hall", ["alice", "bob", "frank"])
    await bob.settle(0.1)
    assert users_told(bob) == [("userJoin", "frank")]


async def test_after_those_moments_every_change_is_written(
    connect, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(membership, "LISTED_SECONDS", 0.05)
    bob: ChatClient = await connect()
    await bob.join("bob", "hall")
    await asyncio.sleep(0.1)
    await publish(server, change("userJoin", "gus"), change("userJoin", "gus"))
    await bob.users("hall", ["bob", "gus"])
    await bob.settle(0.1)
    assert users_told(bob) == [("userJoin", "gus"), ("userJoin", "gus")]  # not judged any more


async def test_no_joiner_is_told_what_its_snapshot_shows_while_presence_paces_the_room(
    connect, server: Server
) -> None:
    """Joins one after another into one room: past presence's burst the room is paced, so a
    joiner's snapshot shows joins whose `userJoin` is published after its reply. Replayed on
    its snapshot, every change a client gets changes its list, and every list ends at the
    roster."""
    messages: list[bytes] = []

    async def record(message: Message) -> None:
        messages.append(message.body)

    sub = await server.system.bus.subscribe(record)
    await sub.bind(topics.room_event("hall", topics.PRESENCE_CHANGES))
    clients: list[ChatClient] = []
    for n in range(3 * announcer.BURST):
        client = await connect(batch=n % 2 == 1)
        await client.join(f"u{n:02d}", "hall")
        clients.append(client)
    everyone = sorted(f"u{n:02d}" for n in range(len(clients)))
    for client in clients:
        await client.users("hall", everyone)
    await asyncio.sleep(2 / announcer.RATE)  # whatever was paced is out
    assert any(body.count(b"\n") for body in messages), "the room was never paced"
    for client in clients:
        [snapshot] = client.received("activeUsers", "hall")
        listed = set(snapshot["data"])
        for event, who in users_told(client):
            assert (who in listed) != (event == "userJoin"), f"{client.username}: {event} {who}"
            listed = listed | {who} if event == "userJoin" else listed - {who}
        assert sorted(listed) == everyone


async def test_a_line_that_is_not_a_change_of_the_room_is_dropped_and_logged(
    connect, server: Server
) -> None:
    alice: ChatClient = await connect()
    await alice.join("alice", "hall")
    with capture_logs() as logs:
        await publish(
            server,
            b"not json",
            orjson.dumps({"event": "updateChat", "room": "hall", "data": {"username": "x"}}),
            change(["userJoin"], "x"),  # an event that is not a string
            change("userJoin", 7),
            change("userJoin", "ivy", room="elsewhere"),
            change("userJoin", "hank"),
        )
        await alice.users("hall", ["alice", "hank"])
    dropped = [e for e in logs if e["event"].startswith("presence change dropped")]
    assert len(dropped) == 5 and all(e["room"] == "hall" for e in dropped)
    assert users_told(alice)[-1] == ("userJoin", "hank")
    assert "ivy" not in {who for _, who in users_told(alice)}
