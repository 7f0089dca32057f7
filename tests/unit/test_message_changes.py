"""Messages that change (PROTOCOL.md 2.3) driven the way a client does, over real WebSockets to
the in-process server on the in-memory bus: `editChat`, `deleteChat`, `react` and `markRead`,
their rules and error codes, what the other connections get, read state, `sinceRev` recovery
and HTTP history in the messages' current state.

A refusal is checked three ways: the error the client gets (code, a message, its ref), the
counters (`roomcast_gateway_errors_total{code}` and, for what history judged,
`roomcast_history_changes_total{op,outcome}`), and the log: a client's mistake is not the
server's, so it logs nothing at warning or above. "Nothing else arrived" is asserted behind a
fence (test_gateway_limits.fence), never after a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from roomcast.shared.models import ChatMessage
from tests.support.chat_client import ChatClient, Frame, RefusedError
from tests.support.inprocess import Server
from tests.unit.test_bad_input import local_metric
from tests.unit.test_gateway_limits import fence

pytestmark = pytest.mark.unit

Connect = Callable[..., Awaitable[ChatClient]]
ROOM = "lobby"


async def joined(connect: Connect, username: str, room: str = ROOM, **extra: Any) -> ChatClient:
    client = await connect()
    await client.join(username, room, **extra)
    return client


async def tab(connect: Connect, of: ChatClient, room: str = ROOM) -> ChatClient:
    """Another connection of the same user (same session)."""
    assert of.username is not None
    return await joined(connect, of.username, room, session=of.session)


def change(room: str, message_id: str, **fields: Any) -> dict[str, Any]:
    return {"room": room, "id": message_id, **fields}


def changed(event: str, message_id: str) -> Callable[[Frame], bool]:
    return lambda f: f["event"] == event and f["data"]["id"] == message_id


@contextmanager
def refusal_checked(code: str, op: str | None = None) -> Iterator[list[dict[str, Any]]]:
    """Around one refused frame: the gateway counted `code` once, history (when it judged the
    change, `op`) counted it once under that op, and nothing was logged at warning or above."""
    sent = local_metric("roomcast_gateway_errors_total", code=code)
    judged = local_metric("roomcast_history_changes_total", op=op or "", outcome=code)
    with capture_logs() as logs:
        yield logs
    assert local_metric("roomcast_gateway_errors_total", code=code) == sent + 1
    if op is not None:
        assert local_metric("roomcast_history_changes_total", op=op, outcome=code) == judged + 1
    loud = [e for e in logs if e["log_level"] in ("warning", "error", "critical")]
    assert loud == [], loud


async def refused(client: ChatClient, event: str, data: dict[str, Any], code: str) -> Frame:
    """Send a frame that must be refused `code`; the error frame (with its ref)."""
    with pytest.raises(RefusedError) as caught:
        await client.request(event, data)
    error = caught.value.frame
    assert error["data"]["code"] == code, error
    assert error["data"]["message"].strip() and set(error["data"]) == {"code", "message"}
    assert error["ref"].startswith("r")
    return error


async def stored(server: Server, message_id: str, room: str = ROOM) -> ChatMessage:
    found = await server.messages.get(room, message_id)
    assert found is not None
    return found


# editChat -------------------------------------------------------------------------------------
async def test_an_edit_reaches_every_other_connection_with_the_new_state(connect, server):
    alice, bob = await joined(connect, "alice"), await joined(connect, "bob")
    alice_tab = await tab(connect, alice)
    sent = await alice.say(ROOM, "helo")

    ack = await alice.request("editChat", change(ROOM, sent["id"], body="  hello  "))

    assert ack["id"] == sent["id"] and ack["body"] == "hello" and ack["rev"] > sent["rev"]
    assert isinstance(ack["edited"], int) and ack["edited"] >= sent["time"]
    assert {k: ack[k] for k in ("username", "time", "room")} == {
        k: sent[k] for k in ("username", "time", "room")
    }
    assert "deleted" not in ack and "reactions" not in ack
    for other in (bob, alice_tab):
        got = await other.wait_for(changed("editChat", sent["id"]))
        assert got["data"] == ack and got["room"] == ROOM
    await fence(bob, ROOM, alice)
    assert alice.received("editChat") == []  # the editor has its ack, not the event
    assert (await stored(server, sent["id"])).wire() == ack


async def test_only_the_author_may_edit(connect, server):
    alice, bob = await joined(connect, "alice"), await joined(connect, "bob")
    sent = await alice.say(ROOM, "mine")
    with refusal_checked("forbidden", "edit"):
        await refused(bob, "editChat", change(ROOM, sent["id"], body="yours now"), "forbidden")
    await fence(bob, ROOM, alice)
    assert alice.received("editChat") == []
    assert (await stored(server, sent["id"])).body == "mine"
    # the author's other connection is the author
    alice_tab = await tab(connect, alice)
    ack = await alice_tab.request("editChat", change(ROOM, sent["id"], body="still mine"))
    assert ack["body"] == "still mine"


@pytest.mark.settings(name_grace_seconds=0)  # a name is free once its connections are gone
async def test_edits_follow_the_session_not_the_name(connect, server):
    """A later user of a released name is not the author of its earlier messages."""
    first = await joined(connect, "dora")
    sent = await first.say(ROOM, "by the first dora")
    await first.close()
    await until_free(connect, "dora")
    second = await joined(connect, "dora")
    assert second.session != first.session
    with refusal_checked("forbidden", "edit"):
        await refused(second, "editChat", change(ROOM, sent["id"], body="mine?"), "forbidden")
    with refusal_checked("forbidden", "delete"):
        await refused(second, "deleteChat", change(ROOM, sent["id"]), "forbidden")


async def until_free(connect: Connect, username: str) -> None:
    """Wait until presence has let go of the name (the close reaches it asynchronously); each
    probe is a new socket, so no join budget runs out."""
    for _ in range(200):
        probe = await connect()
        try:
            await probe.join(username, "probe")
        except RefusedError as exc:
            assert exc.code == "username_taken", exc
            await probe.close()
            await probe.settle(0.05)
            continue
        await probe.close()
        return
    raise AssertionError(f"{username!r} is still taken")


# deleteChat -----------------------------------------------------------------------------------
async def test_a_delete_leaves_a_tombstone_everyone_gets(connect, server):
    alice, bob = await joined(connect, "alice"), await joined(connect, "bob")
    sent = await alice.say(ROOM, "take it back")
    await bob.request("react", change(ROOM, sent["id"], emoji="👍", add=True))

    ack = await alice.request("deleteChat", change(ROOM, sent["id"]))

    assert ack["deleted"] is True and ack["body"] == "" and "reactions" not in ack
    assert ack["rev"] > sent["rev"] and ack["id"] == sent["id"]
    got = await bob.wait_for(changed("deleteChat", sent["id"]))
    assert got["data"] == ack and got["room"] == ROOM
    tombstone = await stored(server, sent["id"])
    assert tombstone.wire() == ack
    # a joiner's history keeps the tombstone in its place
    carol = await joined(connect, "carol")
    history = carol.received("msgHistory", ROOM)[0]["data"]
    assert [m["id"] for m in history] == [sent["id"]] and history[0] == ack


async def test_only_the_author_may_delete_and_a_second_delete_changes_nothing(connect, server):
    alice, bob = await joined(connect, "alice"), await joined(connect, "bob")
    sent = await alice.say(ROOM, "mine")
    with refusal_checked("forbidden", "delete"):
        await refused(bob, "deleteChat", change(ROOM, sent["id"]), "forbidden")
    assert (await stored(server, sent["id"])).deleted is None
    first = await alice.request("deleteChat", change(ROOM, sent["id"]))
    again = await alice.request("deleteChat", change(ROOM, sent["id"]))
    assert again == first  # same tombstone, same rev


async def test_a_tombstone_cannot_be_edited_or_reacted_to(connect, server):
    alice, bob = await joined(connect, "alice"), await joined(connect, "bob")
    sent = await alice.say(ROOM, "soon gone")
    gone = await alice.request("deleteChat", change(ROOM, sent["id"]))
    with refusal_checked("not_found", "edit"):
        await refused(alice, "editChat", change(ROOM, sent["id"], body="back?"), "not_found")
    with refusal_checked("not_found", "react"):
        await refused(bob, "react", change(ROOM, sent["id"], emoji="👍", add=True), "not_found")
    assert (await stored(server, sent["id"])).wire() == gone


# react ----------------------------------------------------------------------------------------
async def test_reactions_add_remove_and_reach_the_others(connect, server):
    alice, bob = await joined(connect, "alice"), await joined(connect, "bob")
    carol = await joined(connect, "carol")
    sent = await alice.say(ROOM, "react to me")

    one = await bob.request("react", change(ROOM, sent["id"], emoji="👍", add=True))
    assert one["reactions"] == {"👍": ["bob"]} and one["rev"] > sent["rev"]
    two = await alice.request("react", change(ROOM, sent["id"], emoji="👍", add=True))
    three = await carol.request("react", change(ROOM, sent["id"], emoji="🎉", add=True))
    assert two["reactions"] == {"👍": ["alice", "bob"]}  # usernames sorted
    assert three["reactions"] == {"👍": ["alice", "bob"], "🎉": ["carol"]}
    await fence(alice, ROOM, bob, carol)
    await fence(bob, ROOM, alice, carol)
    await fence(carol, ROOM, alice, bob)
    # each reactor has its ack, not the event; everyone else has each event, in order
    assert [f["data"] for f in alice.received("react", ROOM)] == [one, three]
    assert [f["data"] for f in bob.received("react", ROOM)] == [two, three]
    assert [f["data"] for f in carol.received("react", ROOM)] == [one, two]

    removed = await carol.request("react", change(ROOM, sent["id"], emoji="🎉", add=False))
    assert removed["reactions"] == {"👍": ["alice", "bob"]}  # an emoji with nobody is left out
    await bob.request("react", change(ROOM, sent["id"], emoji="👍", add=False))
    last = await alice.request("react", change(ROOM, sent["id"], emoji="👍", add=False))
    assert "reactions" not in last
    assert (await bob.wait_for(lambda f: f["event"] == "react" and f["data"] == last))[
        "room"
    ] == ROOM
    assert (await stored(server, sent["id"])).wire() == last


@pytest.mark.parametrize(
    "emoji", ["", "x" * 33, "a b", "\u200b", "\n"], ids=["empty", "33", "space", "zwsp", "nl"]
)
async def test_an_emoji_outside_1_to_32_visible_characters_is_invalid(connect, server, emoji):
    alice = await joined(connect, "alice")
    sent = await alice.say(ROOM, "react to me")
    with refusal_checked("invalid"):
        await refused(alice, "react", change(ROOM, sent["id"], emoji=emoji, add=True), "invalid")
    assert (await stored(server, sent["id"])).reactions is None


async def test_an_emoji_of_32_characters_is_accepted(connect):
    alice = await joined(connect, "alice")
    sent = await alice.say(ROOM, "react to me")
    ack = await alice.request("react", change(ROOM, sent["id"], emoji="y" * 32, add=True))
    assert ack["reactions"] == {"y" * 32: ["alice"]}


@pytest.mark.settings(rate_burst=100)
async def test_at_most_twenty_distinct_reactions_a_message(connect, server):
    alice, bob = await joined(connect, "alice"), await joined(connect, "bob")
    sent = await alice.say(ROOM, "popular")
    for i in range(20):
        await bob.request("react", change(ROOM, sent["id"], emoji=f"e{i}", add=True))
    with refusal_checked("invalid", "react"):
        error = await refused(
            alice, "react", change(ROOM, sent["id"], emoji="e20", add=True), "invalid"
        )
    assert "20" in error["data"]["message"]
    # one more user under an emoji already there is fine
    ack = await alice.request("react", change(ROOM, sent["id"], emoji="e7", add=True))
    assert len(ack["reactions"]) == 20 and ack["reactions"]["e7"] == ["alice", "bob"]


# rules every change shares --------------------------------------------------------------------
CHANGES: dict[str, dict[str, Any]] = {
    "editChat": {"body": "new"},
    "deleteChat": {},
    "react": {"emoji": "👍", "add": True},
    "markRead": {},
}
OPS = {"editChat": "edit", "deleteChat": "delete", "react": "react", "markRead": "markRead"}


@pytest.mark.parametrize("event", list(CHANGES))
async def test_a_change_in_a_room_not_joined_is_not_joined(connect, server, event):
    alice = await joined(connect, "alice")
    sent = await alice.say(ROOM, "here")
    stranger = await joined(connect, "stranger", "elsewhere")
    with refusal_checked("not_joined"):
        await refused(stranger, event, change(ROOM, sent["id"], **CHANGES[event]), "not_joined")
    fresh = await connect()  # not even a username yet
    with refusal_checked("not_joined"):
        await refused(fresh, event, change(ROOM, sent["id"], **CHANGES[event]), "not_joined")
    assert (await stored(server, sent["id"])).rev == sent["rev"]


@pytest.mark.parametrize("event", list(CHANGES))
async def test_a_change_to_an_unknown_message_is_not_found(connect, event):
    alice = await joined(connect, "alice")
    alice_other = await joined(connect, "alice", "other", session=alice.session)
    elsewhere = await alice_other.say("other", "in another room")
    for message_id in ("no-such-message", elsewhere["id"]):
        with refusal_checked("not_found", OPS[event]):
            await refused(alice, event, change(ROOM, message_id, **CHANGES[event]), "not_found")


@pytest.mark.parametrize(
    ("event", "data"),
    [
        ("editChat", {"room": ROOM, "id": "m1", "body": "   "}),
        ("editChat", {"room": ROOM, "id": "m1", "body": "x" * 2001}),
        ("editChat", {"room": ROOM, "id": "m1"}),
        ("deleteChat", {"room": ROOM, "id": ""}),
        ("deleteChat", {"room": ROOM, "id": 7}),
        ("react", {"room": ROOM, "id": "m1", "emoji": "👍"}),
        ("react", {"room": ROOM, "id": "m1", "emoji": "👍", "add": "yes"}),
        ("markRead", {"room": ROOM, "id": "x" * 129}),
        ("markRead", {"room": "no room", "id": "m1"}),
    ],
)
async def test_malformed_changes_are_invalid(connect, event, data):
    alice = await joined(connect, "alice")
    with refusal_checked("invalid"):
        await refused(alice, event, data, "invalid")


@pytest.mark.settings(rate_burst=2, rate_per_second=0.001)
async def test_edits_deletes_and_reactions_share_the_chat_budget_markers_have_theirs(
    connect, server
):
    alice = await joined(connect, "alice")
    sent = await alice.say(ROOM, "one")
    await alice.request("editChat", change(ROOM, sent["id"], body="two"))
    with refusal_checked("rate_limited"):
        await refused(
            alice, "react", change(ROOM, sent["id"], emoji="👍", add=True), "rate_limited"
        )
    assert (await stored(server, sent["id"])).reactions is None
    # markRead has a budget of its own: the chat budget being spent does not stop it...
    assert (await alice.request("markRead", change(ROOM, sent["id"])))["id"] == sent["id"]
    await alice.request("markRead", change(ROOM, sent["id"]))
    # ...but it has one: a flood of markers (each a history request and a write) is refused
    with refusal_checked("rate_limited"):
        error = await refused(alice, "markRead", change(ROOM, sent["id"]), "rate_limited")
    assert "read markers" in error["data"]["message"]


@pytest.mark.settings(request_timeout=0.5)
@pytest.mark.parametrize("event", list(CHANGES))
async def test_history_down_refuses_a_change_unavailable_and_logs_it(connect, server, event):
    alice = await joined(connect, "alice")
    sent = await alice.say(ROOM, "before the outage")
    before = local_metric("roomcast_gateway_errors_total", code="unavailable")
    await server.system.history.stop()
    try:
        with capture_logs() as logs:
            await refused(alice, event, change(ROOM, sent["id"], **CHANGES[event]), "unavailable")
    finally:
        await server.system.history.start()
    assert local_metric("roomcast_gateway_errors_total", code="unavailable") == before + 1
    lines = [e for e in logs if e["event"] == "a service is unavailable"]
    assert len(lines) == 1 and lines[0]["log_level"] == "warning", logs
    assert lines[0]["frame_event"] == event and lines[0]["reason"]
    assert not alice.closed.done()


# markRead and unread counts -------------------------------------------------------------------
async def test_mark_read_moves_forward_only_and_tells_every_connection_of_the_user(connect):
    alice, bob = await joined(connect, "alice"), await joined(connect, "bob")
    alice_tab = await tab(connect, alice)
    alice_main = await joined(connect, "alice", "main", session=alice.session)  # not in ROOM
    ids = [(await bob.say(ROOM, f"m{i}"))["id"] for i in range(3)]

    ack = await alice.request("markRead", change(ROOM, ids[1]))
    assert ack == {"room": ROOM, "id": ids[1], "unread": 1}
    for client in (alice, alice_tab, alice_main):
        marker = await client.event("readMarker")
        assert marker["data"] == {"room": ROOM, "id": ids[1]} and marker["room"] == ROOM

    back = await alice_tab.request("markRead", change(ROOM, ids[0]))
    assert back == {"room": ROOM, "id": ids[1], "unread": 1}  # never back
    assert (await alice.event("readMarker"))["data"] == {"room": ROOM, "id": ids[1]}

    await fence(alice, ROOM, bob)
    assert bob.received("readMarker") == []  # no seen receipts in a public room

    with refusal_checked("not_found", "markRead"):
        await refused(alice, "markRead", change(ROOM, "no-such-message"), "not_found")


async def test_unread_counts_others_messages_after_the_marker_not_deleted(connect):
    alice, bob = await joined(connect, "alice"), await joined(connect, "bob")
    first = await bob.say(ROOM, "one")
    await alice.request("markRead", change(ROOM, first["id"]))
    await alice.say(ROOM, "my own never counts")
    later = [await bob.say(ROOM, f"later {i}") for i in range(3)]
    await bob.request("deleteChat", change(ROOM, later[1]["id"]))

    elsewhere = await joined(connect, "alice", "main", session=alice.session)
    ack = await elsewhere.request(
        "userJoin", {"username": "alice", "room": "other", "session": alice.session}
    )
    assert (ack["lastRead"], ack["unread"]) == (None, 0)  # a room with nothing in it
    rejoin = await connect()
    ack = await rejoin.join("alice", ROOM, session=alice.session)
    assert (ack["lastRead"], ack["unread"]) == (first["id"], 2)
    bob_again = await connect()
    ack = await bob_again.join("bob", ROOM, session=bob.session)
    assert (ack["lastRead"], ack["unread"]) == (None, 1)  # alice's one message, never marked
    mark = await alice.request("markRead", change(ROOM, later[2]["id"]))
    assert mark["unread"] == 0


@pytest.mark.settings(name_grace_seconds=0)
async def test_read_markers_belong_to_the_session_not_the_name(connect, server):
    first = await joined(connect, "erin")
    other = await joined(connect, "bob")
    said = await other.say(ROOM, "read me")
    await first.request("markRead", change(ROOM, said["id"]))
    back = await connect()
    ack = await back.join("erin", ROOM, session=first.session)
    assert ack["lastRead"] == said["id"] and ack["unread"] == 0
    await first.close()
    await back.close()
    await until_free(connect, "erin")
    newcomer = await connect()
    ack = await newcomer.join("erin", ROOM)
    assert newcomer.session != first.session
    assert (ack["lastRead"], ack["unread"]) == (None, 1)


async def test_seen_receipts_in_a_private_room(connect):
    alice, bob = await joined(connect, "alice", "dm-ab"), await joined(connect, "bob", "main")
    await alice.request("newRoom", {"username2": "bob", "room": "dm-ab"})
    await bob.join("bob", "dm-ab")
    alice_tab = await tab(connect, alice, "dm-ab")
    said = await bob.say("dm-ab", "did you see this?")

    ack = await alice.request("markRead", change("dm-ab", said["id"]))
    assert ack == {"room": "dm-ab", "id": said["id"], "unread": 0}

    receipt = await bob.event("readMarker", "dm-ab")
    assert receipt["data"] == {"room": "dm-ab", "username": "alice", "id": said["id"]}
    for client in (alice, alice_tab):
        own = await client.event("readMarker", "dm-ab")
        assert own["data"] == {"room": "dm-ab", "id": said["id"]}
    await fence(bob, "dm-ab", alice, alice_tab)
    for client in (alice, alice_tab):  # the reader's own sockets get no receipt of themselves
        assert [f["data"] for f in client.received("readMarker")] == [
            {"room": "dm-ab", "id": said["id"]}
        ]
    assert len(bob.received("readMarker")) == 1


# sinceRev recovery ----------------------------------------------------------------------------
async def test_since_rev_recovers_new_and_changed_messages_in_rev_order(connect):
    alice, bob = await joined(connect, "alice"), await joined(connect, "bob")
    kept = await bob.say(ROOM, "will be edited")
    gone = await bob.say(ROOM, "will be deleted")
    liked = await alice.say(ROOM, "will get a reaction")
    untouched = await bob.say(ROOM, "stays as it is")
    seen = max(m["rev"] for m in (kept, gone, liked, untouched))
    await alice.close()

    new = await bob.say(ROOM, "said while alice was away")
    edit = await bob.request("editChat", change(ROOM, kept["id"], body="edited"))
    tomb = await bob.request("deleteChat", change(ROOM, gone["id"]))
    react = await bob.request("react", change(ROOM, liked["id"], emoji="👍", add=True))
    again = await bob.request("react", change(ROOM, new["id"], emoji="🎉", add=True))

    back = await connect()
    ack = await back.join("alice", ROOM, session=alice.session, sinceRev=seen)
    assert ack["recovered"] is True
    history = back.received("msgHistory", ROOM)[0]["data"]
    assert history == [edit, tomb, react, again]  # each once, in its current state, by rev
    assert [m["rev"] for m in history] == sorted(m["rev"] for m in history)
    assert tomb["deleted"] is True and tomb["body"] == ""
    assert untouched["id"] not in [m["id"] for m in history]

    nothing = await connect()
    ack = await nothing.join("alice", ROOM, session=alice.session, sinceRev=again["rev"])
    assert ack["recovered"] is True and nothing.received("msgHistory", ROOM)[0]["data"] == []


@pytest.mark.parametrize(("stored_count", "recovered"), [(500, True), (501, False)])
async def test_since_rev_returns_at_most_500(connect, server, stored_count, recovered):
    assert server.settings.recovery_max == 500
    messages = [
        ChatMessage(id=f"bulk{i:05d}", username="bob", body=f"b{i}", time=i, room=ROOM, rev=1)
        for i in range(stored_count)
    ]
    stored_now = await server.messages.insert_many(messages)
    client = await connect()
    ack = await client.join("alice", ROOM, sinceRev=0)
    assert ack["recovered"] is recovered
    history = client.received("msgHistory", ROOM)[0]["data"]
    assert len(history) == 500
    assert [m["id"] for m in history] == [m.id for m in stored_now[-500:]]
    assert [m["rev"] for m in history] == sorted(m["rev"] for m in history)


async def test_since_rev_must_be_a_whole_number_and_not_with_since(connect):
    client = await connect()
    for extra in ({"sinceRev": -1}, {"sinceRev": "5"}, {"sinceRev": 1.5}):
        with refusal_checked("invalid"):
            await refused(
                client, "userJoin", {"username": "alice", "room": ROOM, **extra}, "invalid"
            )
    with refusal_checked("invalid"):
        await refused(
            client,
            "userJoin",
            {"username": "alice", "room": ROOM, "since": "abc", "sinceRev": 1},
            "invalid",
        )


@pytest.mark.settings(request_timeout=0.5)
async def test_since_rev_while_history_is_down_joins_without_it(connect, server):
    alice = await joined(connect, "alice")
    said = await alice.say(ROOM, "before the outage")
    await server.system.history.stop()
    try:
        with capture_logs() as logs:
            bob = await connect()
            ack = await bob.join("bob", ROOM, sinceRev=said["rev"] - 1)
    finally:
        await server.system.history.start()
    assert (ack["history"], ack["recovered"], ack["lastRead"], ack["unread"]) == (
        False,
        False,
        None,
        0,
    )
    assert [f["data"] for f in bob.received("msgHistory", ROOM)] == [[]]
    assert [e for e in logs if e["event"] == "history unavailable; joined without it"], logs
    again = await connect()
    ack = await again.join("bob", ROOM, session=bob.session, sinceRev=said["rev"] - 1)
    assert ack["recovered"] is True and again.received("msgHistory", ROOM)[0]["data"] == [said]


# gap repair ------------------------------------------------------------------------------------
async def test_a_gap_repair_sends_the_changes_a_socket_missed(connect, server):
    """Changes applied while the gateway's deliveries were lost (made here behind its back, in
    the store) reach its sockets in their current state when it repairs the gap."""
    alice, bob = await joined(connect, "alice"), await joined(connect, "bob")
    old = await alice.say(ROOM, "an old message")
    kept = await alice.say(ROOM, "edited while lost")
    gone = await alice.say(ROOM, "deleted while lost")
    last = await alice.say(ROOM, "the last one relayed")
    await bob.wait_for(changed("updateChat", last["id"]))
    store, at = server.messages, 1_900_000_000_000
    hash_of = server.system.gateway.membership  # the author's identity is its session's hash
    author = next(iter(hash_of.user_connections("alice"))).session_hash
    assert author is not None
    edit = await store.edit(
        ROOM, kept["id"], author=author, username="alice", body="new", at=at, rev=0
    )
    tomb = await store.delete(ROOM, gone["id"], author=author, username="alice", rev=0)
    like = await store.react(ROOM, old["id"], username="carl", emoji="👍", add=True, rev=0)
    new = (await server.messages.insert_many([ChatMessage(
        id="lost-new-1", username="carl", body="new while lost", time=at, room=ROOM
    )]))[0]  # fmt: skip

    gateway = server.system.gateway
    await gateway.repairer.on_gap()
    await gateway.repairer.wait()

    for client in (alice, bob):
        assert (await client.wait_for(changed("updateChat", new.id)))["data"] == new.wire()
        assert (await client.wait_for(changed("editChat", kept["id"])))["data"] == edit.wire()
        assert (await client.wait_for(changed("deleteChat", gone["id"])))["data"] == tomb.wire()
        assert (await client.wait_for(changed("react", old["id"])))["data"] == like.wire()
    assert [f["data"]["id"] for f in bob.received("updateChat", ROOM)][-1] == new.id


async def test_a_gap_repair_starts_from_the_joiners_history_when_nothing_was_relayed(
    connect, server
):
    author = await joined(connect, "alice")
    said = await author.say(ROOM, "said before bob came")
    await author.close()
    bob = await joined(connect, "bob")  # the gateway has relayed nothing in the room since
    assert [m["id"] for m in bob.received("msgHistory", ROOM)[0]["data"]] == [said["id"]]
    like = await server.messages.react(
        ROOM, said["id"], username="carl", emoji="👍", add=True, rev=0
    )
    gateway = server.system.gateway
    await gateway.repairer.on_gap()
    await gateway.repairer.wait()
    assert (await bob.wait_for(changed("react", said["id"])))["data"] == like.wire()
    assert bob.received("updateChat", ROOM) == []  # nothing new: no message sent again


async def test_after_a_since_rev_join_a_gap_repair_sends_no_message_again(connect, server):
    """`msgHistory` of a `sinceRev` join is in rev order: its last message is not the room's
    newest, and a repair must not start from it (or it would send known messages again)."""
    stored = await server.messages.insert_many(
        [
            ChatMessage(id=f"old-{n}", username="carl", body=f"m{n}", time=n, room=ROOM)
            for n in range(3)
        ]
    )
    await server.messages.react(ROOM, "old-0", username="dan", emoji="👍", add=True, rev=0)
    alice = await connect()
    ack = await alice.join("alice", ROOM, sinceRev=stored[0].rev)
    assert ack["recovered"] is True
    history = alice.received("msgHistory", ROOM)[0]["data"]
    assert [m["id"] for m in history] == ["old-1", "old-2", "old-0"]
    gateway = server.system.gateway
    await gateway.repairer.on_gap()
    await gateway.repairer.wait()
    bob = await joined(connect, "bob")
    await fence(bob, ROOM, alice)  # whatever the repair sent is in before the fence
    got = [f["data"]["body"] for f in alice.received("updateChat", ROOM)]
    assert len(got) == 1 and got[0].startswith("fence-"), got


@pytest.mark.settings(recovery_max=2)
async def test_a_gap_with_more_changes_than_a_recovery_closes_the_sockets_1013(connect, server):
    alice = await joined(connect, "alice")
    said = [await alice.say(ROOM, f"m{i}") for i in range(4)]
    for message in said[:3]:
        await server.messages.react(
            ROOM, message["id"], username="carl", emoji="👍", add=True, rev=0
        )
    gateway = server.system.gateway
    await gateway.repairer.on_gap()
    await gateway.repairer.wait()
    assert await asyncio.wait_for(alice.closed, 10) == 1013


# HTTP history ---------------------------------------------------------------------------------
async def test_http_history_shows_the_current_state(connect, server):
    alice, bob = await joined(connect, "alice"), await joined(connect, "bob")
    plain = await alice.say(ROOM, "plain")
    edited = await alice.say(ROOM, "typo")
    deleted = await alice.say(ROOM, "oops")
    liked = await alice.say(ROOM, "nice")
    edited = await alice.request("editChat", change(ROOM, edited["id"], body="fixed"))
    deleted = await alice.request("deleteChat", change(ROOM, deleted["id"]))
    liked = await bob.request("react", change(ROOM, liked["id"], emoji="👍", add=True))

    async with httpx.AsyncClient(base_url=server.http) as http:
        page = await http.get(f"/api/rooms/{ROOM}/messages")
        back = await http.get(f"/api/rooms/{ROOM}/messages", params={"before": liked["id"]})
        spec = (await http.get("/openapi.json")).json()
    assert page.status_code == 200, page.text
    assert page.json() == {"messages": [plain, edited, deleted, liked]}  # no null anywhere
    assert back.json() == {"messages": [plain, edited, deleted]}  # the tombstone keeps its place
    async with httpx.AsyncClient(base_url=server.http) as http:
        behind = await http.get(f"/api/rooms/{ROOM}/messages", params={"before": deleted["id"]})
    assert behind.json() == {"messages": [plain, edited]}  # and pages from it
    assert all("rev" in m for m in page.json()["messages"])

    schema = spec["components"]["schemas"]["WireMessage"]
    assert set(schema["required"]) == {"id", "username", "body", "time", "room", "rev"}
    for name in ("edited", "deleted", "reactions"):
        field = schema["properties"][name]
        assert "null" not in str(field) and "anyOf" not in field, field
    assert schema["properties"]["deleted"].get("const") is True
