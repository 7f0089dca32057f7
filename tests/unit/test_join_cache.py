"""A join into a room the gateway already serves takes `msgHistory` from the room cache
(`roomcache.py`): history is asked only for the read state, and the no-gap guarantee still holds
(everything before `msgHistory` is in it, everything after comes live, once, in order).

History reads are counted by wrapping the gateway's `HistoryClient`: a read of messages is
`recent` with more than one message, `since` or `since_rev`; `recent` of one message is the
read state a cached join still asks for.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.chat_client import ChatClient
from tests.support.inprocess import Server


def count_reads(server: Server, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    history = server.system.gateway.history
    reads: list[tuple[str, str]] = []
    for name in ("recent", "since", "since_rev"):
        original = getattr(history, name)

        async def counted(
            room: str, *args: Any, _original: Any = original, _name: str = name, **kw: Any
        ) -> Any:
            if not (_name == "recent" and args and args[0] == 1):
                reads.append((_name, room))
            return await _original(room, *args, **kw)

        monkeypatch.setattr(history, name, counted)
    return reads


def chat(username: str, body: str, room: str = "main") -> dict[str, object]:
    return {"username": username, "body": body, "time": 0, "room": room}


def seen_ids(client: ChatClient, room: str = "main") -> list[str]:
    """The messages a client has, in the order it got them: its `msgHistory`, then live."""
    ids: list[str] = []
    for frame in client.frames:
        if frame.get("room") != room:
            continue
        if frame["event"] == "msgHistory":
            ids += [m["id"] for m in frame["data"]]
        elif frame["event"] == "updateChat":
            ids.append(frame["data"]["id"])
    return ids


@pytest.mark.settings(rate_per_second=100, rate_burst=100)
async def test_a_join_into_a_served_room_reads_no_history_and_misses_nothing(
    server, connect, monkeypatch
) -> None:
    reads = count_reads(server, monkeypatch)
    alice: ChatClient = await connect()
    await alice.join("alice")
    assert reads == [("recent", "main")]  # the room was not served: history answers
    before = [(await alice.say("main", f"before {i}"))["id"] for i in range(5)]
    bob: ChatClient = await connect()
    carol: ChatClient = await connect()
    await bob.join("bob")
    # Carol joins while Alice writes: every message is in her msgHistory or comes live, once.
    answers, _ = await asyncio.gather(
        alice.burst("updateChat", lambda i: chat("alice", f"during {i}"), 20),
        carol.join("carol"),
    )
    during = [a["data"]["id"] for a in answers]
    after = (await alice.say("main", "after"))["id"]
    await carol.wait_for(lambda f: f["event"] == "updateChat" and f["data"]["id"] == after)
    assert seen_ids(carol) == before + during + [after]
    assert reads == [("recent", "main")]  # bob's and carol's joins asked history nothing
    store = [m.id for m in await server.messages.newest("main", 100)]
    assert store == before + during + [after]


async def test_since_an_id_the_cache_holds_recovers_without_history(
    server, connect, monkeypatch
) -> None:
    alice, bob = await connect(), await connect()
    for client, name in ((alice, "alice"), (bob, "bob")):
        await client.join(name)
    last = await bob.say("main", "last seen")
    await bob.close()
    missed = [(await alice.say("main", f"missed {i}"))["id"] for i in range(3)]
    reads = count_reads(server, monkeypatch)
    back: ChatClient = await connect()
    ack = await back.join("bob", session=bob.session, since=last["id"])
    assert ack["recovered"] is True
    assert [m["id"] for m in (await back.event("msgHistory", "main"))["data"]] == missed
    assert reads == []


async def test_changes_reach_the_cache(server, connect, monkeypatch) -> None:
    alice: ChatClient = await connect()
    await alice.join("alice")
    said = await alice.say("main", "typo")
    edited = await alice.request("editChat", {"room": "main", "id": said["id"], "body": "fixed"})
    await alice.request("react", {"room": "main", "id": said["id"], "emoji": "👍", "add": True})
    reads = count_reads(server, monkeypatch)
    bob: ChatClient = await connect()
    await bob.join("bob")
    (message,) = (await bob.event("msgHistory", "main"))["data"]
    assert message["body"] == "fixed" and message["edited"] == edited["edited"]
    assert message["reactions"] == {"👍": ["alice"]}
    assert reads == []


async def test_history_is_asked_again_after_the_room_was_unbound(
    server, connect, monkeypatch
) -> None:
    alice: ChatClient = await connect()
    await alice.join("alice", "lobby")
    await alice.request("userLeave", {"room": "lobby"})  # the binding goes: events may be missed
    reads = count_reads(server, monkeypatch)
    bob: ChatClient = await connect()
    await bob.join("bob", "lobby")
    assert reads == [("recent", "lobby")]


async def test_history_is_asked_again_after_a_loss_of_deliveries(
    server, connect, monkeypatch
) -> None:
    alice: ChatClient = await connect()
    await alice.join("alice")
    reads = count_reads(server, monkeypatch)
    gateway = server.system.gateway
    gateway.room_cache.lost()  # as the bus's on_loss says
    bob: ChatClient = await connect()
    await bob.join("bob")
    gateway.room_cache.resumed()  # as its on_gap says: from here on a read may seed it again
    carol: ChatClient = await connect()
    await carol.join("carol")
    dave: ChatClient = await connect()
    await dave.join("dave")
    assert reads == [("recent", "main"), ("recent", "main")]  # bob's and carol's, not dave's
