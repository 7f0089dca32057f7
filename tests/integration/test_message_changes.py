"""Messages that change (PROTOCOL.md 2.3) on the distributed stack: gateways, history and
presence as separate processes on the machine's RabbitMQ and a SecantusDB. Edits, deletes,
reactions and read markers cross gateways, outlive restarts of history and of a gateway, and a
client that reconnects with `sinceRev` gets what changed while it was away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.servers.rabbitmq import machine_broker_url
from tests.support.chat_client import ChatClient, Frame, RefusedError
from tests.support.cluster import Cluster

pytestmark = pytest.mark.integration

ROOM = "lobby"


def change(message_id: str, room: str = ROOM, **fields: Any) -> dict[str, Any]:
    return {"room": room, "id": message_id, **fields}


def changed(event: str, data: dict[str, Any]) -> Callable[[Frame], bool]:
    return lambda f: f["event"] == event and f["data"] == data and f.get("room") == data["room"]


async def refused(client: ChatClient, event: str, data: dict[str, Any], code: str) -> None:
    with pytest.raises(RefusedError) as caught:
        await client.request(event, data)
    assert caught.value.code == code, caught.value.frame


async def http_history(base: str, room: str = ROOM) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        page = await http.get(f"/api/rooms/{room}/messages")
    assert page.status_code == 200, page.text
    messages: list[dict[str, Any]] = page.json()["messages"]
    return messages


async def test_changes_and_read_state_cross_gateways(cluster, connect):
    gw1, gw2 = await cluster.start_stack()
    alice = await connect(gw1.ws)
    await alice.join("alice", ROOM)
    bob = await connect(gw2.ws)
    await bob.join("bob", ROOM)
    alice_tab = await connect(gw2.ws)
    await alice_tab.join("alice", ROOM, session=alice.session)
    sent = await alice.say(ROOM, "helo")

    edit = await alice.request("editChat", change(sent["id"], body="hello"))
    assert edit["body"] == "hello" and edit["rev"] > sent["rev"] and "edited" in edit
    for other in (bob, alice_tab):
        await other.wait_for(changed("editChat", edit))
    react = await bob.request("react", change(sent["id"], emoji="👍", add=True))
    assert react["reactions"] == {"👍": ["bob"]} and react["rev"] > edit["rev"]
    for other in (alice, alice_tab):
        await other.wait_for(changed("react", react))
    await refused(bob, "editChat", change(sent["id"], body="mine now"), "forbidden")
    await refused(bob, "deleteChat", change(sent["id"]), "forbidden")
    tomb = await alice_tab.request("deleteChat", change(sent["id"]))  # the author's other tab
    assert tomb["deleted"] is True and tomb["body"] == "" and "reactions" not in tomb
    for other in (alice, bob):
        await other.wait_for(changed("deleteChat", tomb))
    await refused(bob, "react", change(sent["id"], emoji="🎉", add=True), "not_found")
    await refused(alice, "editChat", change(sent["id"], body="back"), "not_found")

    # read markers: every connection of the user, on every gateway
    later = await bob.say(ROOM, "read me")
    assert await alice_tab.request("markRead", change(later["id"])) == {
        "room": ROOM,
        "id": later["id"],
        "unread": 0,
    }
    for own in (alice, alice_tab):
        marker = await own.event("readMarker", ROOM)
        assert marker["data"] == {"room": ROOM, "id": later["id"]}

    # seen receipts in a private room whose members are on two gateways
    await alice.join("alice", "dm-ab")
    await alice.request("newRoom", {"username2": "bob", "room": "dm-ab"})
    await bob.event("newRoom")
    await bob.join("bob", "dm-ab")
    said = await bob.say("dm-ab", "seen?")
    await alice.request("markRead", change(said["id"], "dm-ab"))
    receipt = await bob.event("readMarker", "dm-ab")
    assert receipt["data"] == {"room": "dm-ab", "username": "alice", "id": said["id"]}

    # HTTP history of either gateway: current state, the tombstone in its place
    for gateway in (gw1, gw2):
        assert await http_history(gateway.http) == [tomb, later]


async def test_changes_survive_restarts_and_since_rev_recovers_them(
    tmp_path, secantus_server, connect
):
    cluster = Cluster(
        tmp_path,
        machine_broker_url(),
        secantus_server.url,
        heartbeat_interval="1",
        request_timeout="2",
    )
    try:
        gw1, gw2 = await cluster.start_stack()
        history = cluster.processes[0]
        assert history.kind == "history"
        alice = await connect(gw1.ws)
        await alice.join("alice", ROOM)
        bob = await connect(gw2.ws)
        await bob.join("bob", ROOM)
        to_edit = await bob.say(ROOM, "edit me")
        to_delete = await bob.say(ROOM, "delete me")
        to_like = await alice.say(ROOM, "react to me")
        await alice.request("markRead", change(to_delete["id"]))
        seen = max(m["rev"] for m in (to_edit, to_delete, to_like))

        # alice is away: her gateway restarts; meanwhile bob changes the room from the other
        assert await gw1.stop() == 0
        edit = await bob.request("editChat", change(to_edit["id"], body="edited"))
        tomb = await bob.request("deleteChat", change(to_delete["id"]))
        like = await bob.request("react", change(to_like["id"], emoji="👍", add=True))
        new = await bob.say(ROOM, "said while alice was away")

        # history restarts: a change asked while it is down is refused and never done later
        assert await history.stop() == 0
        await refused(bob, "editChat", change(to_edit["id"], body="lost"), "unavailable")
        await cluster.restart(history)
        after = await bob.request("react", change(to_edit["id"], emoji="🎉", add=True))
        assert after["body"] == "edited" and after["edited"] == edit["edited"]
        assert after["rev"] > max(m["rev"] for m in (edit, tomb, like, new))

        await cluster.restart(gw1)
        back = await connect(gw1.ws)
        ack = await back.join("alice", ROOM, session=alice.session, sinceRev=seen)
        assert ack["recovered"] is True
        assert back.received("msgHistory", ROOM)[0]["data"] == [tomb, like, new, after]
        # the read marker outlived both restarts; only bob's new message is unread
        assert (ack["lastRead"], ack["unread"]) == (to_delete["id"], 1)

        # a newcomer on either gateway, and HTTP history, see the current state in stored order
        current = [after, tomb, like, new]
        carol = await connect(gw2.ws)
        await carol.join("carol", ROOM)
        assert carol.received("msgHistory", ROOM)[0]["data"] == current
        assert await http_history(gw1.http) == current

        # changes go on across the restarted gateway
        again = await back.request("react", change(to_edit["id"], emoji="🎉", add=True))
        assert again["reactions"] == {"🎉": ["alice", "bob"]}
        await bob.wait_for(changed("react", again))
    finally:
        await cluster.close()
