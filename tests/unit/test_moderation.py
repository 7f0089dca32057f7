"""Room ownership and moderation (PROTOCOL.md 2.4) through real WebSockets, in process: the
owner rule, every event and every refusal (what the client gets and what is logged), mutes
that end, kicks and bans on every connection of the user and what the others see, and the
gateway's cache (versions, a gap, presence away)."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from roomcast.shared import rpc, topics
from roomcast.shared.auth import subject_key
from roomcast.shared.bus import BusUnavailableError
from roomcast.shared.errors import ProtocolError
from roomcast.shared.moderation import (
    BACKEND,
    ModerateRequest,
    ModerationChange,
    RoomModeration,
    RoomOwner,
    Sanction,
)
from roomcast.shared.store.base import StoreUnavailableError
from tests.support.chat_client import ChatClient, RefusedError
from tests.support.moderation import logged, private_pair
from tests.support.tokens import JWT_SECRET, hs256

pytestmark = pytest.mark.unit


async def _refused(client: ChatClient, event: str, data: dict[str, object]) -> RefusedError:
    with pytest.raises(RefusedError) as refused:
        await client.request(event, data)
    return refused.value


async def _lobby(connect) -> tuple[ChatClient, ChatClient, ChatClient]:
    """alice owns `lobby` (she joined it first); bob and carol are in it too."""
    alice, bob, carol = await connect(), await connect(), await connect()
    await alice.join("alice", room="lobby")
    await bob.join("bob", room="lobby")
    await carol.join("carol", room="lobby")
    return alice, bob, carol


def _chat(client: ChatClient, room: str = "lobby") -> dict[str, object]:
    return {"username": client.username, "body": "hello", "time": 0, "room": room}


# --- the owner rule ----------------------------------------------------------------------------


async def test_the_first_joiner_owns_a_public_room_and_nobody_owns_main(connect, server):
    with capture_logs() as logs:
        alice, bob, _carol = await _lobby(connect)
    state = await server.rooms.get_moderation("lobby")
    assert state.owner is not None and state.owner.username == "alice"
    assert logged(logs, "room owned", room="lobby", owner="alice")
    # a second joiner owns nothing
    refused = await _refused(bob, "kick", {"room": "lobby", "username": "carol"})
    assert refused.code == "forbidden" and "owner of room 'lobby'" in str(refused)
    # main is nobody's, whoever came first
    await alice.join("alice", room="main")
    await bob.join("bob", room="main")
    refused = await _refused(alice, "mute", {"room": "main", "username": "bob", "seconds": 60})
    assert refused.code == "forbidden"
    assert (await server.rooms.get_moderation("main")).owner is None


async def test_ownership_is_bound_to_the_session_not_the_name(connect, server):
    """Another session under the owner's name later (the name freed) owns nothing."""
    alice, bob, _carol = await _lobby(connect)
    tab = await connect()
    await tab.join("alice", room="lobby", session=alice.session)  # the owner's second tab
    assert await tab.request("mute", {"room": "lobby", "username": "bob", "seconds": 30})
    await server.rooms.claim_owner("den", RoomOwner(username="alice", identity="someone-else"))
    await alice.join("alice", room="den")
    await bob.join("bob", room="den")
    refused = await _refused(alice, "kick", {"room": "den", "username": "bob"})
    assert refused.code == "forbidden"


async def test_a_private_room_has_no_owner(connect, server):
    alice, bob = await private_pair(connect, server.rooms, "dm")
    await alice.join("alice", room="dm")
    await bob.join("bob", room="dm")
    assert (await server.rooms.get_moderation("dm")).owner is None
    refused = await _refused(alice, "kick", {"room": "dm", "username": "bob"})
    assert refused.code == "forbidden"


# --- mute --------------------------------------------------------------------------------------


async def test_mute_refuses_chat_typing_and_react_in_that_room_only(connect, server):
    alice, bob, carol = await _lobby(connect)
    await bob.join("bob", room="main")
    said = await carol.say("lobby", "react to me")
    with capture_logs() as logs:
        ack = await alice.request("mute", {"room": "lobby", "username": "bob", "seconds": 600})
        assert ack == {"room": "lobby", "username": "bob", "seconds": 600}
        chat = await _refused(bob, "updateChat", _chat(bob))
        typing = await _refused(bob, "userTyping", {"username": "bob", "room": "lobby"})
        react = await _refused(
            bob, "react", {"room": "lobby", "id": said["id"], "emoji": "👍", "add": True}
        )
    for refused in (chat, typing, react):
        assert refused.code == "muted"
        assert "muted in room 'lobby'" in str(refused) and "more seconds" in str(refused)
    assert logged(logs, "room moderated", action="mute", room="lobby", username="bob", by="alice")
    assert logged(logs, "muted user refused", room="lobby", username="bob")
    await carol.settle()
    assert all(f["data"].get("body") != "hello" for f in carol.received("updateChat", "lobby"))
    await bob.say("main", "still here")  # other rooms are not affected
    await carol.say("lobby", "carol is not muted")
    state = await server.rooms.get_moderation("lobby")
    assert state.muted_until("bob", time.time()) is not None


async def test_unmute_lifts_it_at_once(connect):
    alice, bob, carol = await _lobby(connect)
    await alice.request("mute", {"room": "lobby", "username": "bob", "seconds": 600})
    assert (await _refused(bob, "updateChat", _chat(bob))).code == "muted"
    assert await alice.request("unmute", {"room": "lobby", "username": "bob"}) == {
        "room": "lobby",
        "username": "bob",
    }
    await bob.say("lobby", "free again")
    assert (await carol.event("updateChat", "lobby"))["data"]["body"] == "free again"


async def test_a_mute_ends_by_itself(connect):
    alice, bob, _carol = await _lobby(connect)
    await alice.request("mute", {"room": "lobby", "username": "bob", "seconds": 1})
    assert (await _refused(bob, "updateChat", _chat(bob))).code == "muted"
    async with asyncio.timeout(10):
        while True:
            try:
                await bob.say("lobby", "after the mute")
                break
            except RefusedError as refused:
                assert refused.code == "muted"
                await asyncio.sleep(0.2)


def test_mute_state_ends_at_its_time():
    state = RoomModeration(
        room="r", mutes=(Sanction(key="bob", username="bob", until=100.0),), version=1
    )
    assert state.muted_until("Bob", 99.9) == 100.0  # names compare by their key (2.2)
    assert state.muted_until("bob", 100.0) is None
    assert state.muted_until("carol", 0) is None


# --- kick and ban ----------------------------------------------------------------------------


async def test_kick_takes_every_connection_of_the_user_out_of_the_room(connect):
    alice, bob, carol = await _lobby(connect)
    bob_tab = await connect()
    await bob_tab.join("bob", room="lobby", session=bob.session)
    await bob_tab.join("bob", room="main")
    kicked_before = _count("roomcast_gateway_kicked_total")
    with capture_logs() as logs:
        assert await alice.request("kick", {"room": "lobby", "username": "bob"}) == {
            "room": "lobby",
            "username": "bob",
        }
        for client in (bob, bob_tab):
            kicked = await client.event("kicked", "lobby")
            assert kicked["data"] == {"room": "lobby", "by": "alice"}
        for client in (alice, carol):
            left = await client.event("userLeave", "lobby")
            assert left["data"] == {"username": "bob", "room": "lobby"}
            await client.users("lobby", ["alice", "carol"])
    assert logged(logs, "kicked from room", room="lobby", username="bob") == 2
    assert logged(logs, "room moderated", action="kick", room="lobby", by="alice")
    assert _count("roomcast_gateway_kicked_total") == kicked_before + 2
    refused = await _refused(bob, "updateChat", _chat(bob))
    assert refused.code == "not_joined"
    await carol.say("lobby", "bob is out")
    await bob.settle()
    assert [
        f for f in bob.received("updateChat", "lobby") if f["data"]["body"] == "bob is out"
    ] == []
    await bob_tab.say("main", "main is still mine")  # the other room is untouched
    await bob.join("bob", room="lobby")  # a kick is not a ban
    await alice.users("lobby", ["alice", "bob", "carol"])


async def test_ban_kicks_and_refuses_later_joins_until_unbanned(connect, server):
    alice, bob, carol = await _lobby(connect)
    with capture_logs() as logs:
        assert await alice.request("ban", {"room": "lobby", "username": "bob"})
        assert (await bob.event("kicked", "lobby"))["data"] == {"room": "lobby", "by": "alice"}
        await carol.users("lobby", ["alice", "carol"])
        refused = await _refused(bob, "userJoin", {"username": "bob", "room": "lobby"})
    assert refused.code == "banned" and "banned from room 'lobby'" in str(refused)
    assert logged(logs, "banned user refused", room="lobby", username="bob")
    # another connection of the same user is the same user
    other = await connect()
    join = {"username": "bob", "room": "lobby", "session": bob.session}
    assert (await _refused(other, "userJoin", join)).code == "banned"
    assert (await server.rooms.get_moderation("lobby")).banned("BOB")
    await alice.request("unban", {"room": "lobby", "username": "bob"})
    await bob.join("bob", room="lobby")
    await carol.users("lobby", ["alice", "bob", "carol"])


async def test_a_banned_user_who_was_not_in_the_room_is_kept_out(connect):
    alice, _bob, _carol = await _lobby(connect)
    dave = await connect()
    await dave.join("dave")
    await alice.request("ban", {"room": "lobby", "username": "dave"})
    assert (await _refused(dave, "userJoin", {"username": "dave", "room": "lobby"})).code == (
        "banned"
    )
    await dave.say("main", "main is open")


# --- refusals --------------------------------------------------------------------------------


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_only_owners_and_moderators_may_moderate(connect):
    _alice, bob, carol = await _lobby(connect)
    before = _count("roomcast_moderation_total", action="ban", outcome="forbidden")
    errors = _count("roomcast_gateway_errors_total", code="forbidden")
    with capture_logs() as logs:
        for event, extra in (
            ("mute", {"seconds": 60}),
            ("unmute", {}),
            ("kick", {}),
            ("ban", {}),
            ("unban", {}),
        ):
            refused = await _refused(bob, event, {"room": "lobby", "username": "carol", **extra})
            assert refused.code == "forbidden", event
            assert f"may {event} in it" in str(refused)
    for event in ("mute", "unmute", "kick", "ban", "unban"):
        assert logged(logs, "moderation refused", action=event, by="bob", code="forbidden")
    assert _count("roomcast_moderation_total", action="ban", outcome="forbidden") == before + 1
    assert _count("roomcast_gateway_errors_total", code="forbidden") == errors + 5
    await carol.say("lobby", "nothing happened to me")


async def test_moderation_refusals_say_what_was_wrong(connect):
    alice, _bob, _carol = await _lobby(connect)
    stranger = await connect()
    refused = await _refused(stranger, "kick", {"room": "lobby", "username": "bob"})
    assert refused.code == "not_joined"
    refused = await _refused(alice, "ban", {"room": "lobby", "username": "alice"})
    assert refused.code == "invalid" and "yourself" in str(refused)
    cases = [
        ("mute", {"room": "lobby", "username": "bob"}, "seconds"),
        ("mute", {"room": "lobby", "username": "bob", "seconds": 0}, "seconds"),
        ("mute", {"room": "lobby", "username": "bob", "seconds": "60"}, "seconds"),
        ("mute", {"room": "lobby", "username": "bob", "seconds": 10**9}, "seconds"),
        ("kick", {"room": "lobby"}, "username"),
        ("kick", {"room": "lobby", "username": "no such name!"}, "username"),
        ("ban", {"room": "lobby", "username": 7}, "username"),
        ("unban", {"room": "a.b", "username": "bob"}, "room"),
    ]
    for event, data, field in cases:
        refused = await _refused(alice, event, data)
        assert refused.code == "invalid", (event, data)
        assert field in str(refused), (event, data, str(refused))


async def test_moderation_events_spend_the_chat_budget(connect, server):
    alice, _bob, _carol = await _lobby(connect)
    burst = server.settings.rate_burst
    answers = await alice.burst(
        "mute", lambda i: {"room": "lobby", "username": "bob", "seconds": 60}, burst + 5
    )
    codes = {f["data"]["code"] for f in answers if f["event"] == "error"}
    assert codes == {"rate_limited"}


# --- deleteChat by the owner (2.3 + 2.4) -------------------------------------------------------


async def test_the_owner_may_delete_anyones_message_and_others_may_not(connect):
    alice, bob, carol = await _lobby(connect)
    said = await bob.say("lobby", "spam")
    refused = await _refused(carol, "deleteChat", {"room": "lobby", "id": said["id"]})
    assert refused.code == "forbidden"
    gone = await alice.request("deleteChat", {"room": "lobby", "id": said["id"]})
    assert gone["deleted"] is True and gone["body"] == ""
    assert (await carol.event("deleteChat", "lobby"))["data"]["id"] == said["id"]


# --- the gateway's cache -------------------------------------------------------------------------


async def test_an_older_state_never_replaces_a_newer_one(server):
    moderation = server.system.gateway.moderation
    newer = RoomModeration(room="r", version=3, bans=(Sanction(key="bob", username="bob"),))
    assert moderation.learn(newer) is newer
    assert moderation.learn(RoomModeration(room="r", version=2)) is newer
    same = RoomModeration(room="r", version=3)
    assert moderation.learn(same) is same


async def test_after_a_gap_the_state_is_asked_again(connect, server):
    alice, bob, _carol = await _lobby(connect)
    await alice.request("mute", {"room": "lobby", "username": "bob", "seconds": 600})
    await server.system.gateway.moderation._on_gap()  # deliveries may have been lost
    assert (await _refused(bob, "updateChat", _chat(bob))).code == "muted"


@pytest.mark.settings(request_timeout=1)
async def test_presence_away_leaves_chat_open_and_says_so(connect, server):
    alice, bob, _carol = await _lobby(connect)
    await alice.request("mute", {"room": "lobby", "username": "bob", "seconds": 600})
    await server.system.presence.stop()
    with capture_logs() as logs:
        await server.system.gateway.moderation._on_gap()  # the cache is gone, presence too
        await bob.say("lobby", "presence is away")
        await bob.say("lobby", "and chat does not wait for it again")
        refused = await _refused(alice, "kick", {"room": "lobby", "username": "carol"})
    assert refused.code == "unavailable"
    assert logged(logs, "moderation state unknown; not enforced", room="lobby") == 1


async def test_the_store_away_keeps_main_open_and_other_rooms_closed(connect, server, monkeypatch):
    async def away(room: str) -> RoomModeration:
        raise StoreUnavailableError("switched off by the test")

    monkeypatch.setattr(server.rooms, "get_moderation", away)
    alice = await connect()
    with capture_logs() as logs:
        await alice.join("alice")
        refused = await _refused(alice, "userJoin", {"username": "alice", "room": "lobby"})
    assert refused.code == "unavailable"
    assert logged(logs, "moderation of main unknown; admitted without it", username="alice") == 1
    await alice.say("main", "main is open")


async def test_a_ban_heard_late_is_still_carried_out(connect, server):
    """A state that bans a user still in the room (its change was missed) kicks them."""
    alice, bob, _carol = await _lobby(connect)
    ban = Sanction(key="bob", username="bob", by="alice")
    await server.rooms.add_sanction("lobby", "ban", ban, 0)
    state = await server.rooms.get_moderation("lobby")
    change = ModerationChange(action="unmute", username="carol", by="alice", state=state)
    await server.system.bus.publish(topics.moderation_change("lobby"), rpc.encode(change))
    assert (await bob.event("kicked", "lobby"))["data"] == {"room": "lobby", "by": "alice"}
    await alice.users("lobby", ["alice", "carol"])


async def test_a_malformed_broadcast_is_dropped_and_logged(connect, server):
    _alice, bob, _carol = await _lobby(connect)
    with capture_logs() as logs:
        await server.system.bus.publish(topics.moderation_change("lobby"), b'{"state": 1}')
        await bob.say("lobby", "still fine")
    assert logged(logs, "malformed moderation change dropped", key="moderation.lobby")


# --- signed-in users (tokens) -------------------------------------------------------------------


async def _sign_in(client: ChatClient, token: str, room: str) -> None:
    ack = await client.request("userJoin", {"token": token, "room": room})
    client.username = ack["username"]


@pytest.mark.settings(jwt_secret=JWT_SECRET)
async def test_a_moderator_token_moderates_every_room(connect):
    alice, bob, carol = await _lobby(connect)
    mod, plain = await connect(), await connect()
    await _sign_in(mod, hs256(sub="u-mod", name="mod", roles=["moderator"]), "lobby")
    await _sign_in(plain, hs256(sub="u-plain", name="plain", roles=["reader"]), "lobby")
    refused = await _refused(plain, "kick", {"room": "lobby", "username": "bob"})
    assert refused.code == "forbidden"
    said = await carol.say("lobby", "off topic")
    assert (await mod.request("deleteChat", {"room": "lobby", "id": said["id"]}))["deleted"]
    await mod.request("kick", {"room": "lobby", "username": "bob"})
    assert (await bob.event("kicked", "lobby"))["data"] == {"room": "lobby", "by": "mod"}
    await mod.request("mute", {"room": "main", "username": "alice", "seconds": 60})  # main too
    await alice.join("alice", room="main")
    assert (await _refused(alice, "updateChat", _chat(alice, "main"))).code == "muted"


@pytest.mark.settings(jwt_secret=JWT_SECRET)
async def test_a_signed_in_owner_is_its_subject_on_every_connection(connect, server):
    olga, bob = await connect(), await connect()
    await _sign_in(olga, hs256(sub="u-olga", name="olga"), "den")
    await bob.join("bob", room="den")
    state = await server.rooms.get_moderation("den")
    assert state.owner is not None and state.owner.identity == subject_key("u-olga")
    later = await connect()  # another device, a fresh token of the same subject
    await _sign_in(later, hs256(sub="u-olga", name="olga", ttl=60), "main")
    await later.request("ban", {"room": "den", "username": "bob"})
    assert (await bob.event("kicked", "den"))["data"] == {"room": "den", "by": "olga"}


async def test_the_acting_gateway_holds_a_change_before_its_broadcast(connect, server):
    """Presence's answer carries the new state: no wait for the broadcast on this gateway."""
    alice, bob, _carol = await _lobby(connect)
    subscription = server.system.gateway.moderation._subscription
    assert subscription is not None
    await subscription.unbind("moderation.*")  # the broadcasts no longer reach this gateway
    await alice.request("mute", {"room": "lobby", "username": "bob", "seconds": 600})
    assert (await _refused(bob, "updateChat", _chat(bob))).code == "muted"
    await alice.request("unmute", {"room": "lobby", "username": "bob"})
    await bob.say("lobby", "heard at once")


# --- presence's own refusals -------------------------------------------------------------------


@pytest.mark.settings(request_timeout=2)
async def test_a_store_that_fails_refuses_the_change_unavailable(connect, server, monkeypatch):
    alice, bob, _carol = await _lobby(connect)

    async def away(*args: object) -> RoomModeration:
        raise StoreUnavailableError("switched off by the test")

    monkeypatch.setattr(server.rooms, "add_sanction", away)
    with capture_logs() as logs:
        refused = await _refused(alice, "ban", {"room": "lobby", "username": "bob"})
    assert refused.code == "unavailable" and "room store" in str(refused)
    assert logged(logs, "moderation refused", action="ban", code="unavailable") == 1
    await bob.say("lobby", "not banned")


async def test_a_change_not_broadcast_asks_to_be_sent_again(connect, server, monkeypatch):
    alice, bob, _carol = await _lobby(connect)
    bus = server.system.bus
    publish = bus.publish

    async def no_broadcasts(key: str, body: bytes, **kwargs: object) -> None:
        if key.startswith("moderation."):
            raise BusUnavailableError("broker away (test)")
        await publish(key, body, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bus, "publish", no_broadcasts)
    with capture_logs() as logs:
        refused = await _refused(alice, "mute", {"room": "lobby", "username": "bob", "seconds": 9})
    assert refused.code == "unavailable" and "send it again" in str(refused)
    assert logged(logs, "moderation change not broadcast", room="lobby") == 1
    monkeypatch.setattr(bus, "publish", publish)
    await alice.request("mute", {"room": "lobby", "username": "bob", "seconds": 9})  # again
    assert (await _refused(bob, "updateChat", _chat(bob))).code == "muted"


async def test_presence_refuses_a_mute_without_seconds(server):
    """Gateways never send one (their payloads need `seconds`); presence still says so."""
    request = ModerateRequest(room="lobby", action="mute", username="bob", by=BACKEND, backend=True)
    with pytest.raises(ProtocolError) as refused:
        await rpc.call(server.system.bus, topics.presence_request("moderate"), request, timeout=5)
    assert refused.value.code == "invalid" and "seconds" in refused.value.message


async def test_a_ban_missed_in_a_gap_is_carried_out_after_it(connect, server):
    _alice, bob, carol = await _lobby(connect)
    moderation = server.system.gateway.moderation
    assert moderation._subscription is not None
    await moderation._subscription.unbind("moderation.*")  # this gateway hears nothing now
    request = ModerateRequest(room="lobby", action="ban", username="bob", by="alice", backend=True)
    await rpc.call(server.system.bus, topics.presence_request("moderate"), request, timeout=5)
    await bob.settle(0.1)
    assert bob.received("kicked", "lobby") == []  # missed
    await moderation._on_gap()  # what the bus does once deliveries may have been lost
    assert (await bob.event("kicked", "lobby"))["data"] == {"room": "lobby", "by": "alice"}
    await carol.users("lobby", ["alice", "carol"])


async def test_the_join_ack_says_who_may_moderate(connect):
    alice, bob = await connect(), await connect()
    assert (await alice.join("alice", room="lobby"))["moderates"] is True  # the owner
    assert (await bob.join("bob", room="lobby"))["moderates"] is False
    assert (await alice.join("alice"))["moderates"] is False  # main is nobody's
