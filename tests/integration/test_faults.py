"""The protocol's guarantees when processes die: history down, broker restart, presence
failover, gateways stopped and rolled."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from tests.servers.rabbitmq import PrivateRabbitNode
from tests.support.chat_client import RefusedError
from tests.support.cluster import Cluster
from tests.support.traffic import all_messages, eventually, roll_while_chatting

pytestmark = pytest.mark.integration


async def test_messages_acked_while_history_is_down_are_stored_when_it_returns(cluster, connect):
    history = await cluster.start("history")
    await cluster.start("presence")
    gw = await cluster.start("gateway")
    alice = await connect(gw.ws)
    bob = await connect(gw.ws)
    await alice.join("alice")
    await bob.join("bob")
    assert await history.stop() == 0
    acked = [(await alice.say("main", f"while down {i}"))["id"] for i in range(5)]
    for _ in acked:  # live chat keeps flowing without history
        await bob.event("updateChat", "main")
    await cluster.restart(history)

    async def stored() -> None:
        assert [m["id"] for m in await all_messages(gw.http)] == acked

    await eventually(stored)


async def test_presence_restart_and_failover_rebuild_the_rosters(cluster, connect):
    """Protocol 2.1 across a failover and a restart of presence: each client's list (its
    snapshot, then userJoin/userLeave) stays equal to the HTTP roster, a departure while the
    active replica dies is still announced, names stay kept for their owners (who get back in)
    and private rooms stay private."""
    await cluster.start("history")
    p1 = await cluster.start("presence")
    p2 = await cluster.start("presence")  # stands by (single active consumer)
    gw1, gw2 = await cluster.start("gateway"), await cluster.start("gateway")
    alice = await connect(gw1.ws)
    bob = await connect(gw2.ws)
    await alice.join("alice")
    await bob.join("bob")
    await alice.join("alice", room="pair")
    await alice.request("newRoom", {"username2": "bob", "room": "pair"})
    await bob.join("bob", room="pair")
    await alice.users("pair", ["alice", "bob"])

    for victim, heir in ((p1, p2), (p2, p1)):
        carol = await connect(gw2.ws)
        name = f"carol{victim.port}"
        carol_ack = await carol.join(name)
        await alice.users("main", ["alice", "bob", name])
        await carol.close()  # its disconnect races the kill below: either replica announces it
        victim.signal(signal.SIGKILL)
        await victim.wait()
        if heir is p1:
            await cluster.restart(p1)
        # the heir rebuilds from heartbeats; carol's userLeave is not lost
        await alice.users("main", ["alice", "bob"], timeout=15)
        await eventually(roster_is(gw2.http, "main", ["alice", "bob"]), timeout=15)
        # the heir keeps carol's name for carol's session, and lets online users back in
        impostor = await connect(gw1.ws)
        with pytest.raises(RefusedError) as err:
            await impostor.join(name)
        assert err.value.code == "username_taken"
        carol = await connect(gw1.ws)
        assert (await carol.join(name, session=carol_ack["session"]))["session"]
        await alice.users("main", ["alice", "bob", name])
        with pytest.raises(RefusedError) as err:
            await carol.join(name, room="pair")
        assert err.value.code == "room_private"
        await carol.close()
        await alice.users("main", ["alice", "bob"])
        bob_again = await connect(gw1.ws)  # a second socket of an online user
        await bob_again.join("bob", session=bob.session)
        await bob_again.close()
    await bob.close()
    await alice.users("main", ["alice"])
    await eventually(roster_is(gw1.http, "main", ["alice"]))
    await eventually(roster_is(gw1.http, "pair", ["alice"], alice.session))
    await alice.users("pair", ["alice"])


def roster_is(  # type: ignore[no-untyped-def]
    http_base: str, room: str, expected: list[str], session: str | None = None
):
    """The room's users over HTTP, as any gateway answers them."""
    headers = {"Authorization": f"Bearer {session}"} if session else {}

    async def check() -> None:
        async with httpx.AsyncClient(base_url=http_base, timeout=5) as http:
            reply = await http.get(f"/api/rooms/{room}/users", headers=headers)
        assert reply.status_code == 200, reply.text
        assert reply.json()["users"] == expected

    return check


async def test_sigterm_closes_sockets_with_1012_and_leaves_presence(cluster, connect):
    gw1, gw2 = await cluster.start_stack()
    alice = await connect(gw1.ws)
    bob = await connect(gw2.ws)
    await alice.join("alice")
    await bob.join("bob")
    await alice.users("main", ["alice", "bob"])
    gw2.signal(signal.SIGTERM)
    assert await asyncio.wait_for(bob.closed, 15) == 1012
    assert (await alice.event("userLeave", "main", timeout=5))["data"]["username"] == "bob"
    assert await gw2.wait() == 0


async def test_rolling_restart_loses_no_acknowledged_message(cluster):
    gateways = await cluster.start_stack()
    await roll_while_chatting(gateways, cluster.restart)


async def test_acked_message_survives_a_broker_restart_and_gateways_recover(
    tmp_path, secantus_server, connect
):
    async with PrivateRabbitNode() as node:
        cluster = Cluster(tmp_path, node.url, secantus_server.url, heartbeat_interval="1")
        try:
            await cluster.start("history")
            await cluster.start("presence")
            gw1, gw2 = await cluster.start("gateway"), await cluster.start("gateway")
            alice = await connect(gw1.ws)
            bob = await connect(gw2.ws)
            await alice.join("alice")
            await bob.join("bob")
            before = await alice.say("main", "just before the restart")
            await node.arestart()
            # the gateways reconnect by themselves; chat works again for the same sockets
            # or, if a socket dropped, for a new one

            async def chat_again() -> None:
                try:
                    ack = await alice.say("main", "after the restart")
                except RefusedError as exc:
                    raise AssertionError(exc.code) from exc
                assert ack["body"] == "after the restart"

            await eventually(chat_again, timeout=60)

            async def stored() -> None:
                ids = [m["id"] for m in await all_messages(gw2.http)]
                assert before["id"] in ids

            await eventually(stored, timeout=60)
        finally:
            await cluster.close()
