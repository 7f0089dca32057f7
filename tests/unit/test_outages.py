"""Partial outages (PROTOCOL.md 2.2) on the in-process server: history or presence stopped while
the gateway keeps serving, and message ids judged by the store (also after the gateway forgot
what it saw, and while history cannot be asked).

The in-memory bus confirms a persistent publish once every work queue it reached has processed
it (the store stands in for the broker's confirm in the single-process mode), so a chat message
sent while history is stopped reaches the room at once but is acknowledged once history is back.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from roomcast.gateway.gateway import ChatGateway
from roomcast.gateway.relay import RecentMessages
from tests.support.chat_client import ChatClient, Frame, RefusedError
from tests.support.inprocess import Server

pytestmark = pytest.mark.unit


def chat(username: str, room: str, body: str, **extra: Any) -> dict[str, Any]:
    return {"username": username, "body": body, "time": 0, "room": room, **extra}


def is_chat(body: str) -> Any:
    return lambda f: f["event"] == "updateChat" and f["data"]["body"] == body


def logged(logs: list[dict[str, Any]], event: str, level: str = "warning") -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event and e["log_level"] == level]


async def reply_to(client: ChatClient, ref: str, *, timeout: float = 10) -> Frame:
    return await client.wait_for(
        lambda f: f.get("ref") == ref and f["event"] in ("ack", "error"), timeout=timeout
    )


async def stored_ids(server: Server, room: str) -> list[str]:
    return [m.id for m in await server.messages.newest(room, 1000)]


async def alice_and_bob(connect: Any, room: str) -> tuple[ChatClient, ChatClient]:
    alice: ChatClient = await connect()
    await alice.join("alice", room)
    bob: ChatClient = await connect()
    await bob.join("bob", room)
    return alice, bob


async def unconfirmed(sender: ChatClient, reader: ChatClient, body: str, message_id: str) -> Frame:
    """Send while history is stopped: refused `unavailable` (no confirm), yet the room has it."""
    with pytest.raises(RefusedError) as refused:
        await sender.say("ids", body, id=message_id)
    assert refused.value.code == "unavailable"
    return await reader.wait_for(is_chat(body))


def forget_recent(gateway: ChatGateway) -> None:
    """What a restarted gateway knows of recent messages: nothing (its relay shares the memory)."""
    assert gateway.relay._recent is gateway.recent, (
        "the relay no longer shares the gateway's memory"
    )
    fresh = RecentMessages()
    gateway.recent = fresh
    gateway.relay._recent = fresh


# history down ---------------------------------------------------------------------------------
@pytest.mark.settings(request_timeout=0.5)
async def test_history_down_joins_without_history_and_chat_goes_on(connect, server):
    history = server.system.history
    alice: ChatClient = await connect()
    await alice.join("alice", "ops")
    before = await alice.say("ops", "before the outage")

    await history.stop()
    try:
        with capture_logs() as logs:
            bob: ChatClient = await connect()
            ack = await bob.join("bob", "ops", since=before["id"])
        assert ack["history"] is False and ack["recovered"] is False, ack
        assert [f["data"] for f in bob.received("msgHistory", "ops")] == [[]]
        warned = logged(logs, "history unavailable; joined without it")
        assert warned and warned[0]["room"] == "ops" and warned[0]["reason"], logs

        carol: ChatClient = await connect()
        ack = await carol.join("carol", "ops")
        assert ack["history"] is False and "recovered" not in ack, ack
        assert [f["data"] for f in carol.received("msgHistory", "ops")] == [[]]

        # Live events flow between the members while history is away.
        await bob.send("updateChat", chat("bob", "ops", "during the outage"), "during")
        live = await alice.wait_for(is_chat("during the outage"))
        assert (await carol.wait_for(is_chat("during the outage")))["data"] == live["data"]
        await alice.send("userTyping", {"username": "alice", "room": "ops"})
        await bob.wait_for(lambda f: f["event"] == "userTyping" and f.get("room") == "ops")
    finally:
        await history.start()

    # Acknowledged (here: once stored, the in-memory bus's confirm) and stored once.
    acked = await reply_to(bob, "during")
    assert acked["event"] == "ack" and acked["data"] == live["data"], acked
    assert await stored_ids(server, "ops") == [before["id"], live["data"]["id"]]

    dave: ChatClient = await connect()
    ack = await dave.join("dave", "ops")
    assert "history" not in ack, ack
    history_ids = [m["id"] for m in dave.received("msgHistory", "ops")[0]["data"]]
    assert history_ids == [before["id"], live["data"]["id"]]
    # bob catches up with `since` once history answers again.
    again: ChatClient = await connect()
    ack = await again.join("bob", "ops", session=bob.session, since=before["id"])
    assert ack["recovered"] is True and "history" not in ack, ack
    assert [m["id"] for m in again.received("msgHistory", "ops")[0]["data"]] == [live["data"]["id"]]


# presence down --------------------------------------------------------------------------------
@pytest.mark.settings(request_timeout=0.5)
async def test_presence_down_refuses_the_join_unavailable_and_leaves_no_trace(connect, server):
    presence = server.system.presence
    alice: ChatClient = await connect()
    await alice.join("alice", "ops")
    bob: ChatClient = await connect()
    await bob.join("bob", "ops")
    zed: ChatClient = await connect()

    await presence.stop()
    try:
        with capture_logs() as logs:
            await zed.send("userJoin", {"username": "zed", "room": "ops"}, "z1")
            refused = await reply_to(zed, "z1")
        assert refused["event"] == "error" and refused["data"]["code"] == "unavailable", refused
        assert refused["data"]["message"].strip()
        warned = logged(logs, "a service is unavailable")
        assert len(warned) == 1, logs
        assert warned[0]["frame_event"] == "userJoin" and warned[0]["reason"], warned
        assert not logged(logs, "internal error handling a frame", "error")
        assert zed.received("msgHistory") == [] and zed.received("activeUsers") == []

        # A message of the room after the refusal: bob's copy shows the gateway relayed it.
        sent = await alice.say("ops", "while zed was refused")
        await bob.wait_for(is_chat("while zed was refused"))
    finally:
        await presence.start()

    assert not zed.closed.done(), "a refused join closed the socket"
    async with httpx.AsyncClient(base_url=server.http) as http:
        response = await http.get("/api/rooms/ops/users")
    assert response.status_code == 200 and response.json() == {"users": ["alice", "bob"]}

    # The same socket joins now; nothing of the room reached it before its msgHistory, and the
    # message sent while it was refused is in that history, not a live event.
    ack = await zed.join("zed", "ops")
    assert "already" not in ack, ack
    room_frames = [f for f in zed.frames if f.get("room") == "ops"]
    assert room_frames[0]["event"] == "msgHistory", room_frames
    assert sent["id"] in [m["id"] for m in room_frames[0]["data"]]
    assert zed.received("updateChat") == []
    await alice.wait_for(
        lambda f: f["event"] == "userJoin" and f["data"]["username"] == "zed", timeout=10
    )


# message ids judged by the store --------------------------------------------------------------
async def test_own_id_again_gets_the_stored_message_and_no_second_broadcast(connect, server):
    alice: ChatClient = await connect()
    await alice.join("alice", "ids")
    bob: ChatClient = await connect()
    await bob.join("bob", "ids")
    first = await alice.say("ids", "the original", id="alice-0001")
    again = await alice.say("ids", "a different body", id="alice-0001")
    assert again == first  # same body and server time: the message as stored
    await alice.say("ids", "fence", id="alice-0002")
    await bob.wait_for(is_chat("fence"))
    assert [f["data"]["id"] for f in bob.received("updateChat")] == ["alice-0001", "alice-0002"]

    with pytest.raises(RefusedError) as refused:
        await bob.say("ids", "stealing", id="alice-0001")
    assert refused.value.code == "invalid" and refused.value.frame["data"]["message"].strip()
    assert await stored_ids(server, "ids") == ["alice-0001", "alice-0002"]


async def test_ids_are_judged_by_history_after_the_gateway_forgot_them(connect, server):
    """A restarted gateway has no memory of recent messages: the store decides."""
    alice: ChatClient = await connect()
    await alice.join("alice", "ids")
    bob: ChatClient = await connect()
    await bob.join("bob", "ids")
    first = await alice.say("ids", "the original", id="alice-0001")
    await bob.wait_for(is_chat("the original"))

    forget_recent(server.system.gateway)
    again = await alice.say("ids", "a different body", id="alice-0001")
    assert again == first
    with pytest.raises(RefusedError) as refused:
        await bob.say("ids", "stealing", id="alice-0001")
    assert refused.value.code == "invalid"
    await alice.say("ids", "fence", id="alice-0002")
    await bob.wait_for(is_chat("fence"))
    assert [f["data"]["id"] for f in bob.received("updateChat")] == ["alice-0001", "alice-0002"]
    assert await stored_ids(server, "ids") == ["alice-0001", "alice-0002"]


@pytest.mark.settings(request_timeout=0.5)
async def test_new_ids_are_accepted_while_history_cannot_judge_them(connect, server):
    history = server.system.history
    alice: ChatClient = await connect()
    await alice.join("alice", "ids")
    bob: ChatClient = await connect()
    await bob.join("bob", "ids")
    await alice.say("ids", "before", id="alice-0001")

    await history.stop()
    try:
        with capture_logs() as logs:
            # Each socket sends one message: in memory its ack waits for history (see above).
            await alice.send("updateChat", chat("alice", "ids", "m2", id="alice-0002"), "m2")
            await bob.wait_for(is_chat("m2"))
            await bob.send("updateChat", chat("bob", "ids", "b1", id="bob-0001"), "b1")
            await alice.wait_for(is_chat("b1"))
        assert [f["data"]["id"] for f in bob.received("updateChat")] == ["alice-0001", "alice-0002"]
        # alice's lookup failed; bob's message was not held up by another (lookups paused)
        skipped = logged(logs, "history does not answer id lookups; chat goes on without them")
        assert len(skipped) == 1, logs
    finally:
        await history.start()
    for client, ref, message_id in ((alice, "m2", "alice-0002"), (bob, "b1", "bob-0001")):
        acked = await reply_to(client, ref)
        assert acked["event"] == "ack" and acked["data"]["id"] == message_id, acked
    assert await stored_ids(server, "ids") == ["alice-0001", "alice-0002", "bob-0001"]


@pytest.mark.settings(request_timeout=0.5, publish_timeout=1.0)
async def test_a_retry_of_an_unconfirmed_message_reaches_the_room_once(connect, server):
    """The sender is told `unavailable` when its message is not confirmed in time (in memory:
    history did not store it), but the room may already have it; the client retries with the
    same id, as the protocol's ids are for, and the others must not get it twice."""
    history = server.system.history
    alice, bob = await alice_and_bob(connect, "ids")
    await history.stop()
    try:
        await unconfirmed(alice, bob, "once", "alice-0009")  # the room had it already
        with pytest.raises(RefusedError) as second:
            await alice.say("ids", "once", id="alice-0009")
        assert second.value.code == "unavailable"
    finally:
        await history.start()
    # History is back: the retry is acknowledged with the message as stored (the first one).
    acked = await alice.say("ids", "once", id="alice-0009")
    await alice.say("ids", "fence", id="alice-0010")
    await bob.wait_for(is_chat("fence"))
    assert [f["data"]["id"] for f in bob.received("updateChat")] == ["alice-0009", "alice-0010"]
    assert await stored_ids(server, "ids") == ["alice-0009", "alice-0010"]
    stored = await server.messages.get("ids", "alice-0009")
    assert stored is not None and acked == stored.wire()


@pytest.mark.settings(request_timeout=0.5, publish_timeout=1.0)
async def test_an_unconfirmed_id_stays_its_authors_while_history_cannot_judge_it(connect, server):
    """The gateway's memory of its own unconfirmed publication judges the id while history is
    down: another user cannot take it, and the author's retry keeps the first stamp and body."""
    history = server.system.history
    alice, bob = await alice_and_bob(connect, "ids")
    await history.stop()
    try:
        shown = await unconfirmed(alice, bob, "mine", "alice-0011")
        with capture_logs() as logs, pytest.raises(RefusedError) as stolen:
            await bob.say("ids", "stolen", id="alice-0011")
        assert stolen.value.code == "invalid"
        assert "alice-0011" in stolen.value.frame["data"]["message"]
        assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs
    finally:
        await history.start()
    acked = await alice.say("ids", "another body", id="alice-0011")
    assert acked == shown["data"]  # the first stamp: the message the room already has
    await bob.say("ids", "fence", id="bob-0012")
    await alice.wait_for(is_chat("fence"))
    assert [f["data"]["body"] for f in alice.received("updateChat")] == ["fence"]
    assert [f["data"]["id"] for f in bob.received("updateChat")] == ["alice-0011"]
    assert await stored_ids(server, "ids") == ["alice-0011", "bob-0012"]
