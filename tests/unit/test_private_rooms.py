"""Invitations and private rooms: bound to the two sessions, closed to everyone else."""

from __future__ import annotations

import httpx
import pytest

from tests.support.chat_client import RefusedError

pytestmark = pytest.mark.unit


async def _pair(connect):
    alice, bob = await connect(), await connect()
    await alice.join("alice")
    await bob.join("bob")
    await alice.join("alice", room="dm1")
    return alice, bob


async def test_invitation_reaches_every_connection_of_the_invitee(connect):
    alice, bob = await _pair(connect)
    bob_tab = await connect()
    await bob_tab.join("bob", session=bob.session)
    ack = await alice.request("newRoom", {"username2": "bob", "room": "dm1"})
    assert ack["room"] == "dm1"
    for client in (bob, bob_tab):
        invite = await client.event("newRoom")
        assert invite["data"] == {
            "username": "alice",
            "username2": "bob",
            "room": "dm1",
            "url": "/?room=dm1",
        }
        assert "room" not in invite
    await bob.join("bob", room="dm1")
    await alice.users("dm1", ["alice", "bob"])


async def test_invited_pair_chats_privately(connect):
    alice, bob = await _pair(connect)
    carol = await connect()
    await carol.join("carol")
    await alice.request("newRoom", {"username2": "bob", "room": "dm1"})
    await bob.join("bob", room="dm1")
    await alice.say("dm1", "secret")
    assert (await bob.event("updateChat", "dm1"))["data"]["body"] == "secret"
    with pytest.raises(RefusedError) as err:
        await carol.join("carol", room="dm1")
    assert err.value.code == "room_private"
    await carol.settle()
    assert carol.received("updateChat", "dm1") == []


async def test_offline_invitee_and_main_and_busy_rooms_are_refused(connect):
    alice, _bob = await _pair(connect)
    with pytest.raises(RefusedError) as err:
        await alice.request("newRoom", {"username2": "nobody", "room": "dm1"})
    assert err.value.code == "user_offline"
    with pytest.raises(RefusedError) as err:
        await alice.request("newRoom", {"username2": "bob", "room": "main"})
    assert err.value.code == "room_exists"
    carol = await connect()
    await carol.join("carol")
    await carol.join("carol", room="busy")
    await alice.join("alice", room="busy")
    with pytest.raises(RefusedError) as err:
        await alice.request("newRoom", {"username2": "bob", "room": "busy"})
    assert err.value.code == "room_exists"


async def test_room_private_to_another_pair_is_refused(connect):
    alice, _bob = await _pair(connect)
    carol = await connect()
    await carol.join("carol")
    await alice.request("newRoom", {"username2": "bob", "room": "dm1"})
    with pytest.raises(RefusedError) as err:
        await carol.join("carol", room="dm1")
    assert err.value.code == "room_private"
    dave = await connect()
    await dave.join("dave")
    await alice.request("newRoom", {"username2": "bob", "room": "dm1"})  # re-send is allowed
    with pytest.raises(RefusedError) as err:
        await alice.request("newRoom", {"username2": "dave", "room": "dm1"})
    assert err.value.code == "room_private"


@pytest.mark.settings(name_grace_seconds=0)  # 2.2 keeps the name itself for a while: not here
async def test_impersonator_of_an_offline_member_is_refused(connect):
    alice, bob = await _pair(connect)
    await alice.request("newRoom", {"username2": "bob", "room": "dm1"})
    await bob.close()
    await alice.event("userLeave", "main")
    impostor = await connect()
    await impostor.join("bob")  # the name is free again: a new session
    with pytest.raises(RefusedError) as err:
        await impostor.join("bob", room="dm1")
    assert err.value.code == "room_private"
    await impostor.close()
    await alice.event("userLeave", "main")
    real = await connect()
    await real.join("bob", room="dm1", session=bob.session)


async def test_http_api_is_closed_to_non_members(connect, server):
    alice, bob = await _pair(connect)
    await alice.request("newRoom", {"username2": "bob", "room": "dm1"})
    await alice.say("dm1", "hi bob")
    async with httpx.AsyncClient(base_url=server.http) as http:
        for path in ("/api/rooms/dm1/messages", "/api/rooms/dm1/users"):
            anonymous = await http.get(path)
            assert anonymous.status_code == 403 and anonymous.json()["code"] == "room_private"
            foreign = await http.get(path, headers={"Authorization": "Bearer not-a-session"})
            assert foreign.status_code == 403
        ok = await http.get(
            "/api/rooms/dm1/messages", headers={"Authorization": f"Bearer {bob.session}"}
        )
        assert ok.status_code == 200
        assert [m["body"] for m in ok.json()["messages"]] == ["hi bob"]
        users = await http.get(
            "/api/rooms/dm1/users", headers={"Authorization": f"Bearer {alice.session}"}
        )
        assert users.json() == {"users": ["alice"]}
