# ruff: noqa: RUF001, RUF003  (look-alike letters are what these tests are about)
"""Names at the gateway (PROTOCOL.md 2.2), as a client meets them over WebSocket and HTTP: the
NFKC normal form is what joins, routes, shows and stores; control, format, invisible and bidi
characters and names over their byte limits are refused `invalid` with what is wrong; look-alike
usernames are the same name. A refused frame changes nothing for anyone (checked behind a
fence); refusals are counted, and nothing is logged as a server problem.

`shared/names.py`'s own rules are in test_names.py; this file checks they are applied to every
name a client sends.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
from structlog.testing import capture_logs

from tests.support.chat_client import RefusedError
from tests.unit.test_gateway_limits import Connect, errors_sent, fence, joined, reply_to

pytestmark = pytest.mark.unit

CJK_EXT_B = "\U00020000"  # 𠀀: a letter, 4 bytes in UTF-8
RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE


def problems(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["log_level"] in ("warning", "error", "critical")]


# the normal form ------------------------------------------------------------------------------
async def test_names_join_route_and_show_in_their_nfkc_form(connect: Connect, server: Any) -> None:
    bob = await joined(connect, "bob", "lobby")
    alice = await connect()
    ack = await alice.join("ａｌｉｃｅ", "ｌｏｂｂｙ")  # fullwidth
    assert ack["room"] == "lobby", ack

    history = await alice.event("msgHistory", "lobby")
    assert history["room"] == "lobby"
    await alice.users("lobby", ["alice", "bob"])
    joined_frame = await bob.wait_for(lambda f: f["event"] == "userJoin")
    assert joined_frame["data"] == {"username": "alice", "room": "lobby"}

    # Chat under any spelling of the same name is the normal name's, in the normal room.
    said = await alice.say("ｌｏｂｂｙ", "hello")
    assert (said["username"], said["room"]) == ("alice", "lobby")
    shown = await bob.wait_for(lambda f: f["event"] == "updateChat")
    assert (shown["room"], shown["data"]["username"]) == ("lobby", "alice")
    assert [m.username for m in await server.messages.newest("lobby", 10)] == ["alice"]

    # The session was issued to the normal name: it proves "alice" however it is written.
    again = await connect()
    await again.join("alice", "lobby", session=alice.session)
    composed = await connect()
    await composed.join("jose\u0301", "lobby")  # a decomposed accent
    await bob.wait_for(lambda f: f["event"] == "userJoin" and f["data"]["username"] == "josé")

    async with httpx.AsyncClient(base_url=server.http) as http:
        for spelling in ("lobby", quote("ｌｏｂｂｙ")):
            users = await http.get(f"/api/rooms/{spelling}/users")
            assert users.status_code == 200 and users.json() == {
                "users": ["alice", "bob", "josé"]
            }, users.text
            page = await http.get(f"/api/rooms/{spelling}/messages")
            assert [m["body"] for m in page.json()["messages"]] == ["hello"], page.text


async def test_a_newroom_invitee_is_found_under_any_spelling(connect: Connect) -> None:
    alice = await joined(connect, "alice", "den")
    bob = await joined(connect, "bob")
    await alice.request("newRoom", {"username2": "ｂｏｂ", "room": "ｄｅｎ"})
    invitation = await bob.event("newRoom")
    assert invitation["data"]["username2"] == "bob" and invitation["data"]["room"] == "den"


# refused names ---------------------------------------------------------------------------------
def join(username: str = "carl", room: str = "main") -> tuple[str, dict[str, Any]]:
    return "userJoin", {"username": username, "room": room}


# case: (event, data, what the message must name)
REFUSED: dict[str, tuple[str, dict[str, Any], str]] = {
    "bidi override in a username": (*join(f"eve{RLO}lin"), "U+202E RIGHT-TO-LEFT OVERRIDE"),
    "zero-width space in a username": (*join("a\u200bb"), "U+200B ZERO WIDTH SPACE"),
    "control character in a username": (*join("a\u0007b"), "a control character"),
    "bidi isolate in a room": (*join(room="ro\u2066om"), "U+2066"),
    "hangul filler in a room": (*join(room="a\u3164b"), "an invisible character"),
    "username of 68 UTF-8 bytes in 17 characters": (
        *join(CJK_EXT_B * 17),
        "68 bytes long in UTF-8; at most 64",
    ),
    "room of 132 UTF-8 bytes in 33 characters": (
        *join(room=CJK_EXT_B * 33),
        "132 bytes long in UTF-8; at most 128",
    ),
    "username of 33 characters": (*join("x" * 33), "33 characters long; at most 32"),
    "format character in a typing room": (
        "userTyping",
        {"username": "carl", "room": "ma\u2060in"},
        "U+2060 WORD JOINER",
    ),
    "bidi mark in a chat username": (
        "updateChat",
        {"username": "carl\u200f", "room": "main", "body": "hi", "time": 0},
        "U+200F RIGHT-TO-LEFT MARK",
    ),
    "zero-width joiner in an invitee": (
        "newRoom",
        {"username2": "ali\u200dce", "room": "main"},
        "username2: username contains U+200D ZERO WIDTH JOINER",
    ),
    "leave of a room with a soft hyphen": (
        "userLeave",
        {"room": "ma\u00adin"},
        "U+00AD SOFT HYPHEN",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_refused_name_is_invalid_says_why_and_changes_nothing(
    connect: Connect, server: Any, case: str
) -> None:
    event, data, named = REFUSED[case]
    carl = await joined(connect, "carl")
    watcher = await joined(connect, "watcher")
    before = errors_sent("invalid")
    with capture_logs() as logs:
        await carl.send(event, data, "n1")
        reply = await reply_to(carl, "n1")
    assert reply["event"] == "error" and reply["data"]["code"] == "invalid", reply
    assert named in reply["data"]["message"], reply
    assert errors_sent("invalid") == before + 1
    assert problems(logs) == [], logs  # the client's mistake, counted: no server trouble

    # Nothing happened: carl is still only in main, the watcher saw only the fence.
    await fence(carl, "main", watcher)
    unwanted = ("userJoin", "userTyping", "userLeave", "newRoom")
    assert [f for f in watcher.frames if f["event"] in unwanted] == []
    async with httpx.AsyncClient(base_url=server.http) as http:
        users = await http.get("/api/rooms/main/users")
    assert users.json() == {"users": ["carl", "watcher"]}
    assert not carl.closed.done()


async def test_names_at_their_byte_limits_are_accepted(connect: Connect) -> None:
    client = await connect()
    ack = await client.join(CJK_EXT_B * 16, CJK_EXT_B * 32)  # 64 and 128 bytes
    assert ack["room"] == CJK_EXT_B * 32
    said = await client.say(CJK_EXT_B * 32, "fits")
    assert said["username"] == CJK_EXT_B * 16


# look-alikes ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "lookalike",
    ["\u0430lice", "ALICE", "Ａlice", "\u0430\u217cice"],  # Cyrillic а, capitals, fullwidth, ⅼ
)
async def test_a_username_that_looks_like_a_held_one_is_taken(
    connect: Connect, server: Any, lookalike: str
) -> None:
    alice = await joined(connect, "alice", "room1")
    bob = await joined(connect, "bob", "room1")
    before = errors_sent("username_taken")
    impostor = await connect()
    with capture_logs() as logs, pytest.raises(RefusedError) as refused:
        await impostor.join(lookalike, "room1")
    assert refused.value.code == "username_taken", refused.value.frame
    assert refused.value.frame["data"]["message"].strip()
    assert errors_sent("username_taken") == before + 1
    assert problems(logs) == [], logs
    await fence(alice, "room1", bob)
    assert bob.received("userJoin") == []
    async with httpx.AsyncClient(base_url=server.http) as http:
        users = await http.get("/api/rooms/room1/users")
    assert users.json() == {"users": ["alice", "bob"]}
    # A name that only shares letters is another name.
    await joined(connect, "alicia", "room1")


# HTTP -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("room", "named"),
    [
        (f"ma{RLO}in", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("ma\u200bin", "U+200B ZERO WIDTH SPACE"),
        (CJK_EXT_B * 33, "132 bytes long in UTF-8; at most 128"),
        ("two words", "U+0020 SPACE"),
    ],
)
@pytest.mark.parametrize("page", ["users", "messages"])
async def test_an_invalid_room_in_the_http_api_is_400_saying_why(
    server: Any, connect: Connect, room: str, named: str, page: str
) -> None:
    watcher = await joined(connect, "watcher")
    async with httpx.AsyncClient(base_url=server.http) as http:
        with capture_logs() as logs:
            answer = await http.get(f"/api/rooms/{quote(room)}/{page}")
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["code"] == "invalid" and named in body["message"], body
        assert set(body) == {"code", "message"}
        assert problems(logs) == [], logs
        assert (await http.get("/api/rooms/main/users")).json() == {"users": ["watcher"]}
    assert not watcher.closed.done()
