"""The gateway's answers and limits for protocol 2.1/2.2 on the in-process server: one test per
error code a client can provoke (with its metric and, for service failures, its log line), the
re-join and the joiner's snapshot (2.1), the per-connection and per-user rate limits, and the
send queue's age bound (2.2).

"Nothing more arrived" is asserted behind a fence, not after a sleep: a later event that the
gateway necessarily queues after the one that must not come (the messages of one connection,
and of one gateway's bus subscription, reach a socket in order).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from roomcast.gateway import events
from tests.support.chat_client import ChatClient, Frame, RefusedError
from tests.unit.test_bad_input import RawWebSocket, frame_text, local_metric, replies_by_ref, until

pytestmark = pytest.mark.unit

Connect = Callable[..., Awaitable[ChatClient]]


def errors_sent(code: str) -> float:
    return local_metric("roomcast_gateway_errors_total", code=code)


def is_chat(body: str) -> Callable[[Frame], bool]:
    return lambda f: f["event"] == "updateChat" and f["data"]["body"] == body


async def joined(connect: Connect, username: str, room: str = "main", **extra: Any) -> ChatClient:
    client = await connect()
    await client.join(username, room, **extra)
    return client


async def reply_to(client: ChatClient, ref: str, *, timeout: float = 10) -> Frame:
    return await client.wait_for(
        lambda f: f.get("ref") == ref and f["event"] in ("ack", "error"), timeout=timeout
    )


async def fence(sender: ChatClient, room: str, *receivers: ChatClient) -> None:
    """Have `sender` say something in `room` and wait until every receiver has it: whatever the
    gateway queued for them before it has arrived."""
    body = f"fence-{id(sender)}-{len(sender.frames)}"
    await sender.say(room, body)
    for receiver in receivers:
        await receiver.wait_for(is_chat(body))


# error codes ----------------------------------------------------------------------------------
# Each case sets the scene and returns the socket and the one frame that must be refused with
# that code (and its ref; bad_json cannot carry one).
Case = Callable[[Connect], Awaitable[tuple[ChatClient, str | bytes, str | None]]]


async def _bad_json(connect: Connect) -> tuple[ChatClient, str | bytes, str | None]:
    return await connect(), '{"event": "userJoin", "ref": "j1"', None


async def _bad_frame(connect: Connect) -> tuple[ChatClient, str | bytes, str | None]:
    return await connect(), json.dumps({"data": {}, "ref": "f1"}), "f1"


async def _bad_event(connect: Connect) -> tuple[ChatClient, str | bytes, str | None]:
    return await connect(), frame_text("shout", {"room": "main"}, "e1"), "e1"


async def _invalid(connect: Connect) -> tuple[ChatClient, str | bytes, str | None]:
    raw = frame_text("userJoin", {"username": "two words", "room": "main"}, "i1")
    return await connect(), raw, "i1"


async def _not_joined(connect: Connect) -> tuple[ChatClient, str | bytes, str | None]:
    client = await joined(connect, "carl")
    return client, frame_text("userTyping", {"username": "carl", "room": "elsewhere"}, "n1"), "n1"


async def _username_taken(connect: Connect) -> tuple[ChatClient, str | bytes, str | None]:
    await joined(connect, "alice")
    raw = frame_text("userJoin", {"username": "alice", "room": "main"}, "t1")
    return await connect(), raw, "t1"


async def _username_mismatch(connect: Connect) -> tuple[ChatClient, str | bytes, str | None]:
    client = await joined(connect, "carl")
    return client, frame_text("userJoin", {"username": "karl", "room": "other"}, "m1"), "m1"


async def _user_offline(connect: Connect) -> tuple[ChatClient, str | bytes, str | None]:
    client = await joined(connect, "carl", "den")
    return client, frame_text("newRoom", {"username2": "ghost", "room": "den"}, "o1"), "o1"


async def _room_exists(connect: Connect) -> tuple[ChatClient, str | bytes, str | None]:
    await joined(connect, "alice")
    client = await joined(connect, "carl")
    return client, frame_text("newRoom", {"username2": "alice", "room": "main"}, "x1"), "x1"


async def _room_private(connect: Connect) -> tuple[ChatClient, str | bytes, str | None]:
    alice = await joined(connect, "alice", "den")
    await joined(connect, "bob")
    await alice.request("newRoom", {"username2": "bob", "room": "den"})
    raw = frame_text("userJoin", {"username": "carl", "room": "den"}, "p1")
    return await connect(), raw, "p1"


async def _rate_limited(connect: Connect) -> tuple[ChatClient, str | bytes, str | None]:
    client = await joined(connect, "carl")  # typing_burst=1 (the test's settings)
    await client.request("userTyping", {"username": "carl", "room": "main"})
    return client, frame_text("userTyping", {"username": "carl", "room": "main"}, "r1"), "r1"


CASES: dict[str, Case] = {
    "bad_json": _bad_json,
    "bad_frame": _bad_frame,
    "bad_event": _bad_event,
    "invalid": _invalid,
    "not_joined": _not_joined,
    "username_taken": _username_taken,
    "username_mismatch": _username_mismatch,
    "user_offline": _user_offline,
    "room_exists": _room_exists,
    "room_private": _room_private,
    "rate_limited": _rate_limited,
}


@pytest.mark.settings(typing_burst=1, typing_per_second=0.001)
@pytest.mark.parametrize("code", list(CASES))
async def test_each_client_error_code_is_sent_with_its_ref_and_counted(connect, code):
    client, raw, ref = await CASES[code](connect)
    before = errors_sent(code)
    await client.send_raw(raw)
    if ref is None:
        reply = await client.wait_for(lambda f: f["event"] == "error" and "ref" not in f)
    else:
        reply = await reply_to(client, ref)
    assert reply["event"] == "error", reply
    assert reply["data"]["code"] == code and reply["data"]["message"].strip(), reply
    assert set(reply["data"]) == {"code", "message"}
    assert errors_sent(code) == before + 1
    # The socket stays open and answers the next frame.
    await client.send("userTyping", {"username": "nobody", "room": "nowhere"}, "after")
    assert (await reply_to(client, "after"))["event"] == "error"
    assert not client.closed.done()


@pytest.mark.settings(request_timeout=0.5)
@pytest.mark.parametrize("outage", ["presence stopped", "broker down"])
async def test_unavailable_is_sent_counted_and_logged(connect, server, outage):
    client = await joined(connect, "carl")
    if outage == "presence stopped":
        await server.system.presence.stop()
        frame_event, raw = (
            "userJoin",
            frame_text("userJoin", {"username": "carl", "room": "b"}, "u1"),
        )
    else:
        frame_event = "updateChat"
        raw = frame_text(
            "updateChat", {"username": "carl", "body": "hi", "time": 0, "room": "main"}, "u1"
        )
    before = errors_sent("unavailable")
    try:
        with capture_logs() as logs:
            if outage == "broker down":
                async with server.system.bus.outage():
                    await client.send_raw(raw)
                    reply = await reply_to(client, "u1")
            else:
                await client.send_raw(raw)
                reply = await reply_to(client, "u1")
    finally:
        if outage == "presence stopped":
            await server.system.presence.start()
    assert reply["event"] == "error" and reply["data"]["code"] == "unavailable", reply
    assert reply["data"]["message"].strip()
    assert errors_sent("unavailable") == before + 1
    lines = [e for e in logs if e["event"] == "a service is unavailable"]
    assert len(lines) == 1, logs
    assert lines[0]["log_level"] == "warning" and lines[0]["frame_event"] == frame_event
    assert lines[0]["reason"], lines
    assert not client.closed.done()
    await client.request("userTyping", {"username": "carl", "room": "main"})


async def test_a_handler_that_raises_is_internal_logged_with_the_exception(connect, monkeypatch):
    client = await joined(connect, "carl")

    async def broken(gw: Any, conn: Any, data: Any) -> dict[str, object]:
        raise RuntimeError("the typing handler broke")

    monkeypatch.setitem(events.HANDLERS, "userTyping", broken)
    before = errors_sent("internal")
    with capture_logs() as logs:
        await client.send("userTyping", {"username": "carl", "room": "main"}, "b1")
        reply = await reply_to(client, "b1")
    assert reply["event"] == "error" and reply["data"]["code"] == "internal", reply
    assert "broke" not in reply["data"]["message"]  # no internals on the wire
    assert errors_sent("internal") == before + 1
    lines = [e for e in logs if e["event"] == "internal error handling a frame"]
    assert len(lines) == 1, logs
    assert lines[0]["log_level"] == "error" and lines[0]["frame_event"] == "userTyping"
    assert lines[0].get("exc_info"), lines  # log.exception: the traceback goes with it
    assert not client.closed.done()
    await client.say("main", "still served")


# 2.1: re-join and the joiner's snapshot -------------------------------------------------------
async def test_a_repeated_join_is_acked_already_and_changes_nothing(connect):
    alice = await joined(connect, "alice", "room1")
    bob = await joined(connect, "bob", "room1")
    await alice.wait_for(lambda f: f["event"] == "userJoin" and f["data"]["username"] == "bob")
    kinds = ("msgHistory", "activeUsers", "userJoin", "userLeave")
    counts = {e: len(bob.received(e)) for e in kinds}
    alice_counts = {e: len(alice.received(e)) for e in kinds}

    again = await bob.request("userJoin", {"username": "bob", "room": "room1"})
    assert again["already"] is True and again["room"] == "room1", again
    assert again["session"] == bob.session

    await fence(alice, "room1", bob)
    await fence(bob, "room1", alice)
    assert {e: len(bob.received(e)) for e in kinds} == counts
    assert {e: len(alice.received(e)) for e in kinds} == alice_counts
    assert [f["data"]["username"] for f in alice.received("userJoin", "room1")] == ["bob"]


async def test_a_repeated_join_acks_the_same_data_plus_already(connect):
    alice = await connect()
    first = await alice.join("alice", "room1")
    again = await alice.request("userJoin", {"username": "alice", "room": "room1"})
    assert again == {**first, "already": True}


async def test_a_repeated_join_acks_the_read_state_as_it_is_now(connect):
    alice = await connect()
    first = await alice.join("alice", "room1")
    assert (first["lastRead"], first["unread"]) == (None, 0)
    bob = await joined(connect, "bob", "room1")
    await bob.say("room1", "one", id="bob-read-1")
    await bob.say("room1", "two", id="bob-read-2")
    await alice.wait_for(is_chat("two"))
    again = await alice.request("userJoin", {"username": "alice", "room": "room1"})
    assert again == {**first, "unread": 2, "already": True}

    await alice.request("markRead", {"room": "room1", "id": "bob-read-1"})
    again = await alice.request("userJoin", {"username": "alice", "room": "room1"})
    assert again == {**first, "lastRead": "bob-read-1", "unread": 1, "already": True}
    assert len(alice.received("msgHistory")) == len(alice.received("activeUsers")) == 1


@pytest.mark.settings(request_timeout=0.5)
async def test_a_repeated_join_while_history_is_down_repeats_the_first_ack(connect, server):
    alice = await connect()
    first = await alice.join("alice", "room1")
    await server.system.history.stop()
    try:
        with capture_logs() as logs:
            again = await alice.request("userJoin", {"username": "alice", "room": "room1"})
        assert again == {**first, "already": True}
        lines = [e for e in logs if e["event"] == "read state of a repeated join not refreshed"]
        assert len(lines) == 1 and lines[0]["log_level"] == "info", logs
        assert lines[0]["room"] == "room1" and lines[0]["reason"], lines

        # A join made without history keeps saying so when repeated.
        late = await alice.join("alice", "room2")
        assert late["history"] is False
        again = await alice.request("userJoin", {"username": "alice", "room": "room2"})
        assert again == {**late, "already": True}
    finally:
        await server.system.history.start()
    assert not alice.closed.done()


@pytest.mark.settings(join_burst=2, join_per_second=0.001)
async def test_a_repeated_join_counts_against_the_join_budget(connect):
    alice = await joined(connect, "alice", "room1")
    await alice.request("userJoin", {"username": "alice", "room": "room1"})
    before = errors_sent("rate_limited")
    with pytest.raises(RefusedError) as refused:
        await alice.request("userJoin", {"username": "alice", "room": "room1"})
    assert refused.value.code == "rate_limited"
    assert errors_sent("rate_limited") == before + 1
    await alice.say("room1", "still in the room")


async def test_the_joiner_gets_one_snapshot_after_its_history_and_others_only_user_join(connect):
    alice = await joined(connect, "alice", "snap")
    bob = await connect()
    ack = await bob.join("bob", "snap")
    await fence(alice, "snap", bob)
    await fence(bob, "snap", alice)

    events_of_bob = [f["event"] for f in bob.frames if f.get("room") == "snap" or "ref" in f]
    assert events_of_bob[:3] == ["msgHistory", "activeUsers", "ack"], events_of_bob
    assert [f["data"] for f in bob.received("activeUsers")] == [["alice", "bob"]]
    assert bob.received("userJoin") == []
    assert ack["room"] == "snap"
    # alice: her own snapshot once, then bob's arrival as a userJoin only
    assert [f["data"] for f in alice.received("activeUsers")] == [["alice"]]
    assert [f["data"] for f in alice.received("userJoin")] == [{"username": "bob", "room": "snap"}]
    assert alice.lists["snap"] == bob.lists["snap"] == ["alice", "bob"]


# rate limits ----------------------------------------------------------------------------------
@pytest.mark.settings(join_burst=3, join_per_second=0.001)
async def test_joins_and_leaves_share_a_per_connection_budget(connect, server):
    carl = await connect()
    await carl.join("carl", "r1")
    await carl.request("userLeave", {"room": "r1"})
    await carl.join("carl", "r2")
    before = errors_sent("rate_limited")
    with pytest.raises(RefusedError) as join_refused:
        await carl.join("carl", "r3")
    with pytest.raises(RefusedError) as leave_refused:
        await carl.request("userLeave", {"room": "r2"})
    assert join_refused.value.code == leave_refused.value.code == "rate_limited"
    assert errors_sent("rate_limited") == before + 2

    # The refused join did nothing; the refused leave left carl in r2.
    with pytest.raises(RefusedError) as typing_refused:
        await carl.request("userTyping", {"username": "carl", "room": "r3"})
    assert typing_refused.value.code == "not_joined"
    await carl.request("userTyping", {"username": "carl", "room": "r2"})
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/api/rooms/r3/users")).json() == {"users": []}
        assert (await http.get("/api/rooms/r2/users")).json() == {"users": ["carl"]}

    # Per connection: carl's other socket has its own budget.
    other = await connect()
    await other.join("carl", "r3", session=carl.session)


@pytest.mark.settings(invite_burst=2, invite_per_second=0.001)
async def test_invitations_have_a_per_connection_budget(connect):
    alice = await joined(connect, "alice", "den")
    await alice.join("alice", "main")
    bob = await joined(connect, "bob")
    invite = {"username2": "bob", "room": "den"}
    await alice.request("newRoom", invite)
    await alice.request("newRoom", invite)  # a repeat is allowed: it re-sends the invitation
    with pytest.raises(RefusedError) as refused:
        await alice.request("newRoom", invite)
    assert refused.value.code == "rate_limited"
    await fence(alice, "main", bob)
    assert len(bob.received("newRoom")) == 2

    second = await joined(connect, "alice", "den", session=alice.session)
    await second.request("newRoom", invite)
    await fence(alice, "main", bob)
    assert len(bob.received("newRoom")) == 3


@pytest.mark.settings(rate_burst=3, rate_per_second=0.001)
async def test_the_chat_budget_is_shared_by_a_users_sockets_only(connect, server):
    first = await joined(connect, "alice")
    second = await joined(connect, "alice", session=first.session)
    carol = await joined(connect, "carol")
    answers = [
        *(await first.burst("updateChat", lambda i: _chat("alice", f"a{i}"), 2)),
        *(await second.burst("updateChat", lambda i: _chat("alice", f"b{i}"), 2)),
    ]
    assert [f["event"] for f in answers] == ["ack", "ack", "ack", "error"], answers
    assert answers[3]["data"]["code"] == "rate_limited"
    with pytest.raises(RefusedError) as refused:
        await first.say("main", "a2")
    assert refused.value.code == "rate_limited"

    # Another user has a budget of its own.
    for i in range(3):
        await carol.say("main", f"c{i}")
    bodies = [m.body for m in await server.messages.newest("main", 100)]
    assert bodies == ["a0", "a1", "b0", "c0", "c1", "c2"]


def _chat(username: str, body: str) -> dict[str, Any]:
    return {"username": username, "body": body, "time": 0, "room": "main"}


# send queue: the age bound --------------------------------------------------------------------
@pytest.mark.settings(
    send_queue_seconds=1.0,
    send_queue_bytes=1024 * 1024 * 1024,  # the most Settings allows: only the age can close
    rate_burst=10_000,
    rate_per_second=10_000,
)
async def test_a_socket_whose_oldest_event_waits_too_long_is_closed_1013(connect, server):
    sender = await joined(connect, "sender")
    watcher = await joined(connect, "watcher")
    slow = await RawWebSocket.connect(server.url)
    try:
        await slow.send_text(frame_text("userJoin", {"username": "slow", "room": "main"}, "j"))
        frames = await slow.read_until(
            lambda fs: any(op == 1 and json.loads(p).get("ref") == "j" for op, p in fs), timeout=10
        )
        assert any(op == 1 and json.loads(p)["event"] == "ack" for op, p in frames), frames
        await watcher.users("main", ["sender", "slow", "watcher"])

        # Fill the slow socket's buffers with big messages, then keep adding a few until the
        # oldest unsent one is older than the bound (the check runs on every new event).
        closes = "roomcast_gateway_slow_consumer_closes_total"
        before = local_metric(closes)
        body = "😀" * 2000
        sent = 0
        with capture_logs() as logs:
            while local_metric(closes) == before:
                assert sent < 3000, "the slow consumer was never closed"
                refs = [f"s{sent + k}" for k in range(25)]
                for ref in refs:
                    data = {**_chat("sender", body), "id": f"age-test-{ref}"}
                    await sender.send("updateChat", data, ref)
                sent += len(refs)
                last = refs[-1]
                await until(lambda r=last: bool(replies_by_ref(sender).get(r)), timeout=20)
                await asyncio.sleep(0.05)  # pacing only: the bound is about time passing
        assert local_metric(closes) == before + 1
        lines = [e for e in logs if e["event"] == "slow consumer disconnected"]
        assert len(lines) == 1 and lines[0]["log_level"] == "warning", lines
        # The age bound closed it, not the byte bound: far below the bytes, at least the age
        # (the log rounds to milliseconds, so an age just past the bound may read as equal).
        assert lines[0]["oldest_seconds"] >= server.settings.send_queue_seconds, lines
        assert lines[0]["queued_bytes"] < server.settings.send_queue_bytes // 2, lines

        frames = await slow.read_until(lambda fs: any(op == 8 for op, _ in fs), timeout=30)
        close = [payload for op, payload in frames if op == 8]
        assert close and struct.unpack("!H", close[0][:2])[0] == 1013
    finally:
        slow.close()

    # The watcher, reading normally, got every message once, in order, and stays connected.
    await watcher.wait_for(
        lambda f: f["event"] == "updateChat" and f["data"]["id"] == f"age-test-s{sent - 1}",
        timeout=20,
    )
    ids = [f["data"]["id"] for f in watcher.received("updateChat", "main")]
    assert ids == [f"age-test-s{k}" for k in range(sent)]
    await watcher.users("main", ["sender", "watcher"])
    assert not watcher.closed.done() and not sender.closed.done()
    await fence(sender, "main", watcher)
