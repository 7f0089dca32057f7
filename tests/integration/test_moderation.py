"""Moderation across processes (PROTOCOL.md 2.4): two gateways, presence and history on
RabbitMQ and SecantusDB. A ban or a mute made on one gateway holds on the other, and keeps
holding after presence (which owns the state) and a gateway restart; the backend API on either
gateway acts on both, and its disconnect closes the user's sockets on the other."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from roomcast.shared.secantus import SecantusServer
from tests.servers.rabbitmq import machine_broker_url
from tests.support.chat_client import ChatClient, RefusedError
from tests.support.cluster import Cluster

pytestmark = pytest.mark.integration

API_KEY = "integration-api-key-0123456789"


async def _refused(client: ChatClient, event: str, data: dict[str, object]) -> str:
    with pytest.raises(RefusedError) as refused:
        await client.request(event, data)
    return refused.value.code


async def test_moderation_holds_on_every_gateway_and_after_restarts(
    tmp_path: Path, secantus_server: SecantusServer, connect
) -> None:
    cluster = Cluster(
        tmp_path, machine_broker_url(), secantus_server.url, heartbeat_interval="1", api_key=API_KEY
    )
    try:
        gw1, gw2 = await cluster.start_stack()
        presence = cluster.processes[1]
        assert presence.kind == "presence"
        alice = await connect(gw1.ws)  # the owner, on gateway 1
        await alice.join("alice", room="lobby")
        bob, carol = await connect(gw2.ws), await connect(gw2.ws)  # both on gateway 2
        await bob.join("bob", room="lobby")
        await carol.join("carol", room="lobby")
        await alice.users("lobby", ["alice", "bob", "carol"])

        # a ban made on gateway 1 is carried out on gateway 2
        await alice.request("ban", {"room": "lobby", "username": "bob"})
        kicked = await bob.event("kicked", "lobby")
        assert kicked["data"] == {"room": "lobby", "by": "alice"}
        await alice.users("lobby", ["alice", "carol"])
        await carol.users("lobby", ["alice", "carol"])
        assert await _refused(bob, "userJoin", {"username": "bob", "room": "lobby"}) == "banned"
        # a mute made on gateway 1 holds on gateway 2
        await alice.request("mute", {"room": "lobby", "username": "carol", "seconds": 3600})
        chat = {"username": "carol", "body": "hi", "time": 0, "room": "lobby"}
        assert await _refused_soon(carol, chat) == "muted"

        # presence (the state's owner) restarts: the state is in the store
        await presence.stop()
        await cluster.restart(presence)
        bob_again = await connect(gw2.ws)
        join = {"username": "bob", "room": "lobby", "session": bob.session}
        assert await _refused(bob_again, "userJoin", join) == "banned"

        # gateway 2 restarts: its cache is gone, the join reply brings the state back
        await gw2.stop()
        await cluster.restart(gw2)
        carol_again = await connect(gw2.ws)
        await carol_again.join("carol", room="lobby", session=carol.session)
        assert await _refused(carol_again, "updateChat", chat) == "muted"
        bob_third = await connect(gw2.ws)
        assert await _refused(bob_third, "userJoin", join) == "banned"

        # the backend API on gateway 2 lifts both; gateway 1 lets bob in
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=gw2.http, headers=headers) as http:
            assert (await http.delete("/api/rooms/lobby/bans/bob")).status_code == 204
            assert (await http.delete("/api/rooms/lobby/mutes/carol")).status_code == 204
        bob_on_1 = await connect(gw1.ws)
        await bob_on_1.join("bob", room="lobby", session=bob.session)
        await carol_again.say("lobby", "unmuted")
        assert (await alice.event("updateChat", "lobby"))["data"]["body"] == "unmuted"

        # a disconnect asked of gateway 1 closes carol's socket on gateway 2
        async with httpx.AsyncClient(base_url=gw1.http, headers=headers) as http:
            assert (await http.post("/api/users/carol/disconnect")).status_code == 204
        assert await asyncio.wait_for(carol_again.closed, 10) == 4003
    finally:
        await cluster.close()


async def _refused_soon(client: ChatClient, data: dict[str, object]) -> str:
    """The code of the first refused `updateChat`: a broadcast may still be on its way, so
    the first messages may go through (a bounded wait, not a timing assertion)."""
    async with asyncio.timeout(5):
        while True:
            try:
                await client.request("updateChat", data)
            except RefusedError as refused:
                return refused.code
            await asyncio.sleep(0.2)
