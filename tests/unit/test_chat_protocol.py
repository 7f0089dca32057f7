"""PROTOCOL.md's events, driven through the gateway's WebSocket on the in-memory bus."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets

from tests.support.chat_client import ChatClient, RefusedError

pytestmark = pytest.mark.unit


async def test_join_sends_history_then_users_then_ack(connect):
    alice: ChatClient = await connect()
    ack = await alice.join("alice")
    assert ack["room"] == "main" and len(ack["session"]) > 40
    events = [f["event"] for f in alice.frames]
    assert events == ["msgHistory", "activeUsers", "ack"]
    assert alice.frames[0]["data"] == [] and alice.frames[0]["room"] == "main"
    assert alice.frames[1]["data"] == ["alice"]


async def test_second_joiner_is_announced_to_others_not_to_itself(connect):
    alice, bob = await connect(), await connect()
    await alice.join("alice")
    await bob.join("bob")
    await alice.users("main", ["alice", "bob"])
    joined = await alice.event("userJoin", "main")
    assert joined["data"] == {"username": "bob", "room": "main"}
    await bob.settle()
    assert bob.received("userJoin") == []
    assert bob.received("activeUsers", "main")[-1]["data"] == ["alice", "bob"]


async def test_chat_is_stored_broadcast_to_others_and_acked(connect, server):
    alice, bob = await connect(), await connect()
    await alice.join("alice")
    await bob.join("bob")
    ack = await alice.say("main", "  hello  ", id="c-0001-abc")
    assert ack["id"] == "c-0001-abc" and ack["body"] == "hello" and ack["username"] == "alice"
    assert ack["time"] > 1_700_000_000_000
    got = await bob.event("updateChat", "main")
    assert got["data"] == ack
    await alice.settle()
    assert alice.received("updateChat") == []
    assert [m.id for m in await server.messages.newest("main", 10)] == ["c-0001-abc"]


async def test_server_assigns_ids_and_time(connect):
    alice = await connect()
    await alice.join("alice")
    first = await alice.say("main", "one", time=5)
    second = await alice.say("main", "two")
    assert first["id"] != second["id"] and first["time"] != 5


async def test_repeated_client_id_is_acked_again_not_stored_or_broadcast_twice(connect, server):
    alice, bob = await connect(), await connect()
    await alice.join("alice")
    await bob.join("bob")
    first = await alice.say("main", "once", id="same-id-123")
    again = await alice.say("main", "once", id="same-id-123")
    assert again == first
    await bob.event("updateChat", "main")
    await bob.settle()
    assert len(bob.received("updateChat")) == 1
    assert len(await server.messages.newest("main", 10)) == 1


@pytest.mark.settings(rate_burst=100)
async def test_joiner_gets_recent_history_oldest_first(connect):
    alice = await connect()
    await alice.join("alice")
    for i in range(55):
        await alice.say("main", f"m{i}")
    bob = await connect()
    await bob.join("bob")
    history = bob.received("msgHistory", "main")[0]["data"]
    assert [m["body"] for m in history] == [f"m{i}" for i in range(5, 55)]


async def test_typing_reaches_others_only(connect):
    alice, bob = await connect(), await connect()
    await alice.join("alice")
    await bob.join("bob")
    await alice.request("userTyping", {"username": "alice", "room": "main"})
    typing = await bob.event("userTyping", "main")
    assert typing["data"] == {"username": "alice", "room": "main"}
    await alice.settle()
    assert alice.received("userTyping") == []


async def test_not_joined_rooms_are_refused(connect):
    alice = await connect()
    await alice.join("alice")
    for event, data in [
        ("userTyping", {"username": "alice", "room": "lobby"}),
        ("updateChat", {"username": "alice", "body": "x", "time": 0, "room": "lobby"}),
        ("newRoom", {"username2": "bob", "room": "lobby"}),
        ("userLeave", {"room": "lobby"}),
    ]:
        with pytest.raises(RefusedError) as err:
            await alice.request(event, data)
        assert err.value.code == "not_joined", event


async def test_before_any_join_everything_but_join_is_not_joined(connect):
    alice = await connect()
    with pytest.raises(RefusedError) as err:
        await alice.request("userTyping", {"username": "alice", "room": "main"})
    assert err.value.code == "not_joined"


async def test_username_mismatch(connect):
    alice = await connect()
    await alice.join("alice")
    with pytest.raises(RefusedError) as err:
        await alice.request("userJoin", {"username": "mallory", "room": "other"})
    assert err.value.code == "username_mismatch"
    with pytest.raises(RefusedError) as err:
        await alice.request(
            "updateChat", {"username": "bob", "body": "x", "time": 0, "room": "main"}
        )
    assert err.value.code == "username_mismatch"


async def test_username_taken_unless_session_proves_the_same_user(connect):
    alice = await connect()
    ack = await alice.join("alice")
    impostor = await connect()
    with pytest.raises(RefusedError) as err:
        await impostor.join("alice")
    assert err.value.code == "username_taken"
    second_tab = await connect()
    again = await second_tab.join("alice", session=ack["session"])
    assert again["session"] == ack["session"]


async def test_a_refused_name_can_be_replaced_on_the_same_socket(connect):
    alice, other = await connect(), await connect()
    await alice.join("alice")
    with pytest.raises(RefusedError):
        await other.join("alice")
    await other.join("alicia")


async def test_forged_or_foreign_session_is_invalid(connect):
    alice, bob = await connect(), await connect()
    ack = await alice.join("alice")
    with pytest.raises(RefusedError) as err:
        await bob.join("bob", session=ack["session"])
    assert err.value.code == "invalid"
    forged = ack["session"][:-4] + ("AAAA" if not ack["session"].endswith("AAAA") else "BBBB")
    with pytest.raises(RefusedError) as err:
        await bob.join("alice", session=forged)
    assert err.value.code == "invalid"


async def test_session_survives_reconnect_when_name_is_free(connect):
    alice = await connect()
    ack = await alice.join("alice")
    await alice.close()
    back = await connect()
    again = await back.join("alice", session=ack["session"])
    assert again["session"] == ack["session"]


async def test_leave_announces_user_leave_and_users(connect):
    alice, bob = await connect(), await connect()
    await alice.join("alice")
    await bob.join("bob")
    assert await bob.request("userLeave", {"room": "main"}) == {"room": "main"}
    left = await alice.event("userLeave", "main")
    assert left["data"] == {"username": "bob", "room": "main"}
    await alice.users("main", ["alice"])


async def test_closing_the_socket_leaves_every_room(connect):
    alice, bob = await connect(), await connect()
    await alice.join("alice")
    await alice.join("alice", room="second")
    await bob.join("bob")
    await bob.join("bob", room="second")
    await bob.close()
    for room in ("main", "second"):
        left = await alice.event("userLeave", room)
        assert left["data"]["username"] == "bob"
        await alice.users(room, ["alice"])


async def test_user_leave_only_when_last_connection_goes(connect):
    alice, bob = await connect(), await connect()
    ack = await alice.join("alice")
    tab2 = await connect()
    await tab2.join("alice", session=ack["session"])
    await bob.join("bob")
    await tab2.close()
    await bob.settle(0.5)
    assert bob.received("userLeave") == []
    await alice.close()
    await bob.event("userLeave", "main")


async def test_messages_of_one_connection_arrive_in_order(connect):
    alice, bob = await connect(), await connect()
    await alice.join("alice")
    await bob.join("bob")
    for i in range(15):
        await alice.send(
            "updateChat", {"username": "alice", "body": f"n{i}", "time": 0, "room": "main"}
        )
    bodies = [(await bob.event("updateChat", "main"))["data"]["body"] for _ in range(15)]
    assert bodies == [f"n{i}" for i in range(15)]


async def test_rate_limit_refuses_beyond_the_burst_and_stores_nothing_extra(connect, server):
    alice = await connect()
    await alice.join("alice")
    replies = await alice.burst(
        "updateChat",
        lambda i: {"username": "alice", "body": f"b{i}", "time": 0, "room": "main"},
        30,
    )
    limited = [r for r in replies if r["event"] == "error"]
    assert limited and all(r["data"]["code"] == "rate_limited" for r in limited)
    acked = [r for r in replies if r["event"] == "ack"]
    assert 20 <= len(acked) < 30
    assert len(await server.messages.newest("main", 100)) == len(acked)


async def test_batching_delivers_several_events_per_frame_as_lines(connect):
    alice = await connect()
    await alice.join("alice")
    reader = await connect(batch=True)
    await reader.join("reader")
    for i in range(10):
        await alice.send(
            "updateChat", {"username": "alice", "body": f"b{i}", "time": 0, "room": "main"}
        )
    got = [(await reader.event("updateChat", "main"))["data"]["body"] for _ in range(10)]
    assert got == [f"b{i}" for i in range(10)]


async def test_a_draining_gateway_refuses_new_sockets_and_closes_open_ones_1012(connect, server):
    alice = await connect()
    await alice.join("alice")
    drain = asyncio.create_task(server.system.gateway.drain())
    assert await asyncio.wait_for(alice.closed, 10) == 1012
    await drain
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect()
    assert refused.value.response.status_code == 503
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.get("/healthz")).status_code == 200


@pytest.mark.settings(max_rooms_per_connection=3)
async def test_a_connection_may_be_in_a_bounded_number_of_rooms(connect):
    alice = await connect()
    for room in ("main", "r1", "r2"):
        await alice.join("alice", room=room)
    with pytest.raises(RefusedError) as err:
        await alice.join("alice", room="r3")
    assert err.value.code == "invalid" and "at most 3 rooms" in str(err.value)
    await alice.join("alice", room="r2")  # re-joining one it is in is fine
    await alice.request("userLeave", {"room": "r1"})
    await alice.join("alice", room="r3")


async def test_typing_floods_are_refused_beyond_their_own_rate(connect):
    alice, bob = await connect(), await connect()
    await alice.join("alice")
    await bob.join("bob")
    replies = await alice.burst("userTyping", lambda i: {"username": "alice", "room": "main"}, 30)
    sent = [r for r in replies if r["event"] == "ack"]
    refused = [r for r in replies if r["event"] == "error"]
    assert refused and all(r["data"]["code"] == "rate_limited" for r in refused)
    await bob.settle()
    assert len(bob.received("userTyping", "main")) == len(sent) < 30
    await alice.say("main", "chat is limited separately")  # typing did not spend chat tokens
