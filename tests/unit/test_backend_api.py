"""The application's backend API (PROTOCOL.md 2.4) over real HTTP and WebSockets, in process:
each endpoint and what the room sees, 401 without or with a wrong key (and the log line), key
rotation, 429 past a key's budget, private rooms read with the key, and the OpenAPI."""

from __future__ import annotations

import httpx
import pytest
from structlog.testing import capture_logs

from tests.support.chat_client import ChatClient, RefusedError
from tests.support.moderation import logged, private_pair

pytestmark = pytest.mark.unit

OLD_KEY = "old-key-0123456789abcdef"
NEW_KEY = "new-key-0123456789abcdef"
KEYED = pytest.mark.settings(api_key=f"{OLD_KEY}, {NEW_KEY}")


def _api(server, key: str | None = NEW_KEY) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.AsyncClient(base_url=server.http, headers=headers)


async def _room(connect, room: str = "lobby") -> tuple[ChatClient, ChatClient]:
    alice, bob = await connect(), await connect()
    await alice.join("alice", room=room)
    await bob.join("bob", room=room)
    return alice, bob


# --- keys --------------------------------------------------------------------------------------


@KEYED
async def test_without_or_with_a_wrong_key_every_call_is_401(server):
    calls = [
        ("POST", "/api/rooms/lobby/messages", {"username": "bot", "body": "hi"}),
        ("POST", "/api/users/bob/disconnect", None),
        ("POST", "/api/rooms/lobby/bans", {"username": "bob"}),
        ("DELETE", "/api/rooms/lobby/bans/bob", None),
        ("POST", "/api/rooms/lobby/mutes", {"username": "bob", "seconds": 5}),
        ("DELETE", "/api/rooms/lobby/mutes/bob", None),
    ]
    for key, reason in ((None, "no Authorization header"), ("wrong-key", "not a key")):
        async with _api(server, key) as http:
            with capture_logs() as logs:
                for method, path, body in calls:
                    answer = await http.request(method, path, json=body)
                    assert answer.status_code == 401, (method, path)
                    assert answer.json()["code"] == "unauthorized"
                    assert reason in answer.json()["message"]
                    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert logged(logs, "backend API key refused", path="/api/users/bob/disconnect")
    # a bad body without a key is still 401 (the key is checked first)
    async with _api(server, None) as http:
        answer = await http.post("/api/rooms/lobby/messages", json={"nonsense": True})
        assert answer.status_code == 401
    async with _api(server, f"{NEW_KEY}x") as http:  # a longer key is not the key
        assert (await http.post("/api/users/bob/disconnect")).status_code == 401


async def test_with_no_key_configured_the_api_is_off(server):
    async with _api(server, "anything-at-all-0123456789") as http:
        answer = await http.post("/api/users/bob/disconnect")
        assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"


@KEYED
async def test_either_key_works_while_rotating(connect, server):
    _alice, bob = await _room(connect)
    for key in (OLD_KEY, NEW_KEY):
        async with _api(server, key) as http:
            posted = await http.post(
                "/api/rooms/lobby/messages", json={"username": "bot", "body": f"via {key[:3]}"}
            )
            assert posted.status_code == 201
        assert (await bob.event("updateChat", "lobby"))["data"]["body"] == f"via {key[:3]}"


@pytest.mark.settings(api_key=f"{OLD_KEY},{NEW_KEY}", api_burst=3, api_rate_per_second=0.01)
async def test_each_key_has_its_own_budget(server):
    async with _api(server, NEW_KEY) as http:
        answers = [await http.post("/api/users/nobody/disconnect") for _ in range(4)]
    assert [a.status_code for a in answers] == [204, 204, 204, 429]
    assert answers[3].json()["code"] == "rate_limited"
    assert answers[3].headers["Retry-After"] == "1"
    async with _api(server, OLD_KEY) as http:  # the other key's budget is untouched
        assert (await http.post("/api/users/nobody/disconnect")).status_code == 204
        # reads with the key spend the same budget
        assert (await http.get("/api/rooms/main/users")).status_code == 200
        assert (await http.get("/api/rooms/main/users")).status_code == 200
        limited = await http.get("/api/rooms/main/users")
        assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"


# --- messages ----------------------------------------------------------------------------------


@KEYED
async def test_a_posted_message_is_stored_and_sent_to_the_room(connect, server):
    alice, bob = await _room(connect)
    async with _api(server) as http:
        with capture_logs() as logs:
            posted = await http.post(
                "/api/rooms/lobby/messages",
                json={"username": "bot", "body": "  welcome  ", "id": "bot-0001-welcome"},
            )
        assert posted.status_code == 201
        message = posted.json()
        assert message["id"] == "bot-0001-welcome" and message["body"] == "welcome"
        assert message["username"] == "bot" and message["room"] == "lobby"
        assert {"time", "rev"} <= message.keys() and "deleted" not in message
        for client in (alice, bob):
            assert (await client.event("updateChat", "lobby"))["data"] == message
        assert logged(logs, "backend posted", room="lobby", id="bot-0001-welcome")
        again = await http.post(
            "/api/rooms/lobby/messages",
            json={"username": "bot", "body": "welcome twice?", "id": "bot-0001-welcome"},
        )
        assert again.status_code == 200 and again.json() == message
        history = await http.get("/api/rooms/lobby/messages")
        assert [m["body"] for m in history.json()["messages"]] == ["welcome"]
    await bob.settle()
    assert len(bob.received("updateChat", "lobby")) == 1
    # nobody's session may edit the backend's message, not even a user named like its author
    bot = await connect()
    await bot.join("bot", room="lobby")
    with pytest.raises(RefusedError) as refused:
        await bot.request("editChat", {"room": "lobby", "id": message["id"], "body": "mine"})
    assert refused.value.code == "forbidden"


@KEYED
async def test_bad_messages_are_refused_with_what_was_wrong(server):
    cases = [
        ("lobby", {"username": "bot", "body": "   "}, "body"),
        ("lobby", {"username": "bot", "body": "x" * 2001}, "body"),
        ("lobby", {"username": "no such name", "body": "hi"}, "username"),
        ("lobby", {"body": "hi"}, "username"),
        ("lobby", {"username": "bot", "body": "hi", "id": "short"}, "id"),
        ("a.b", {"username": "bot", "body": "hi"}, "room"),
        ("lobby", {"username": "bot", "body": 7}, "body"),
    ]
    async with _api(server) as http:
        for room, body, field in cases:
            answer = await http.post(f"/api/rooms/{room}/messages", json=body)
            assert answer.status_code == 400, (room, body)
            assert answer.json()["code"] == "invalid" and field in answer.json()["message"]
        first = await http.post(
            "/api/rooms/lobby/messages", json={"username": "bot", "body": "hi", "id": "shared-id-1"}
        )
        assert first.status_code == 201
        clash = await http.post(
            "/api/rooms/lobby/messages",
            json={"username": "other", "body": "hi", "id": "shared-id-1"},
        )
        assert clash.status_code == 400 and "belongs to another message" in clash.json()["message"]


# --- disconnect --------------------------------------------------------------------------------


@KEYED
async def test_disconnect_closes_every_connection_of_the_user_with_4003(connect, server):
    alice, bob = await _room(connect)
    bob_tab = await connect()
    await bob_tab.join("bob", room="main", session=bob.session)
    async with _api(server) as http:
        with capture_logs() as logs:
            answer = await http.post("/api/users/bob/disconnect")
            assert answer.status_code == 204 and answer.content == b""
            assert await bob.closed == 4003
            assert await bob_tab.closed == 4003
    assert logged(logs, "disconnected by the backend", username="bob") == 2
    assert (await alice.event("userLeave", "lobby"))["data"]["username"] == "bob"
    await alice.say("lobby", "alice stays")
    async with _api(server) as http:
        bad = await http.post("/api/users/not%20a%20name/disconnect")
        assert bad.status_code == 400 and "username" in bad.json()["message"]


# --- bans and mutes -----------------------------------------------------------------------------


@KEYED
async def test_a_ban_kicks_and_keeps_out_until_deleted(connect, server):
    alice, bob = await _room(connect)
    async with _api(server) as http:
        banned = await http.post("/api/rooms/lobby/bans", json={"username": "bob"})
        assert banned.status_code == 204
        assert (await bob.event("kicked", "lobby"))["data"] == {"room": "lobby", "by": "backend"}
        await alice.users("lobby", ["alice"])
        with pytest.raises(RefusedError) as refused:
            await bob.join("bob", room="lobby")
        assert refused.value.code == "banned"
        lifted = await http.delete("/api/rooms/lobby/bans/bob")
        assert lifted.status_code == 204
    await bob.join("bob", room="lobby")
    await alice.users("lobby", ["alice", "bob"])


@KEYED
async def test_a_mute_refuses_chat_until_deleted(connect, server):
    alice, bob = await _room(connect)
    async with _api(server) as http:
        muted = await http.post("/api/rooms/lobby/mutes", json={"username": "bob", "seconds": 60})
        assert muted.status_code == 204
        with pytest.raises(RefusedError) as refused:
            await bob.say("lobby", "can I?")
        assert refused.value.code == "muted"
        for body, field in (
            ({"username": "bob", "seconds": 0}, "seconds"),
            ({"username": "bob"}, "seconds"),
            ({"username": "b b", "seconds": 5}, "username"),
        ):
            bad = await http.post("/api/rooms/lobby/mutes", json=body)
            assert bad.status_code == 400 and field in bad.json()["message"]
        assert (await http.delete("/api/rooms/lobby/mutes/bob")).status_code == 204
    await bob.say("lobby", "yes")
    assert (await alice.event("updateChat", "lobby"))["data"]["body"] == "yes"


@KEYED
async def test_the_backend_moderates_main_too(connect, server):
    """No owner is needed; a bad body is 400 `invalid`, and nobody else is touched."""
    alice, bob = await _room(connect, "main")
    async with _api(server) as http:
        assert (
            await http.post("/api/rooms/main/bans", json={"username": "bob"})
        ).status_code == 204
        assert (await bob.event("kicked", "main"))["data"]["by"] == "backend"
        bad = await http.post("/api/rooms/main/bans", json={"username": 5})
        assert bad.status_code == 400 and bad.json()["code"] == "invalid"
    await alice.say("main", "still open")


# --- reads ---------------------------------------------------------------------------------------


@KEYED
async def test_the_key_reads_private_rooms(connect, server):
    alice, _bob = await private_pair(connect, server.rooms, "dm")
    await alice.join("alice", room="dm")
    await alice.say("dm", "just us")
    async with _api(server, None) as anonymous:
        assert (await anonymous.get("/api/rooms/dm/users")).status_code == 403
    async with _api(server, "wrong-key") as wrong:
        assert (await wrong.get("/api/rooms/dm/messages")).status_code == 403
    async with _api(server) as http:
        users = await http.get("/api/rooms/dm/users")
        assert users.status_code == 200 and users.json() == {"users": ["alice"]}
        messages = await http.get("/api/rooms/dm/messages")
        assert [m["body"] for m in messages.json()["messages"]] == ["just us"]


@KEYED
async def test_the_openapi_documents_the_backend_api_with_its_scheme(server):
    async with _api(server, None) as http:
        spec = (await http.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["backendKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    paths = spec["paths"]
    for path, method in (
        ("/api/rooms/{room}/messages", "post"),
        ("/api/users/{username}/disconnect", "post"),
        ("/api/rooms/{room}/bans", "post"),
        ("/api/rooms/{room}/bans/{username}", "delete"),
        ("/api/rooms/{room}/mutes", "post"),
        ("/api/rooms/{room}/mutes/{username}", "delete"),
    ):
        operation = paths[path][method]
        assert operation["security"] == [{"backendKey": []}], path
        assert {"401", "429"} <= operation["responses"].keys(), path
    assert "get" in paths["/api/rooms/{room}/messages"]


@pytest.mark.settings(api_key=NEW_KEY, request_timeout=1)
async def test_presence_away_is_503(connect, server):
    _alice, bob = await _room(connect)
    await server.system.presence.stop()
    async with _api(server) as http:
        answer = await http.post("/api/rooms/lobby/bans", json={"username": "bob"})
    assert answer.status_code == 503 and answer.json()["code"] == "unavailable"
    await bob.say("lobby", "not banned")
