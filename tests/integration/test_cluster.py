"""Gateways, history and presence as separate processes on RabbitMQ and SecantusDB."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.servers.rabbitmq import PrivateRabbitNode, machine_broker_url
from tests.support.chat_client import RefusedError
from tests.support.checks import assert_no_gap_no_duplicate
from tests.support.cluster import Cluster

pytestmark = pytest.mark.integration


async def test_clients_on_different_gateways_see_each_other(cluster, connect):
    gw1, gw2 = await cluster.start_stack()
    alice = await connect(gw1.ws)
    bob = await connect(gw2.ws)
    await alice.join("alice")
    await bob.join("bob")
    await alice.users("main", ["alice", "bob"])
    assert (await alice.event("userJoin", "main"))["data"]["username"] == "bob"
    await bob.request("userTyping", {"username": "bob", "room": "main"})
    assert (await alice.event("userTyping", "main"))["data"]["username"] == "bob"
    sent = await alice.say("main", "across gateways", id="xgw-000001")
    assert (await bob.event("updateChat", "main"))["data"] == sent
    # invitations and private rooms across gateways
    await alice.join("alice", room="dm-ab")
    await alice.request("newRoom", {"username2": "bob", "room": "dm-ab"})
    invite = await bob.event("newRoom")
    assert invite["data"]["room"] == "dm-ab"
    await bob.join("bob", room="dm-ab")
    carol = await connect(gw2.ws)
    await carol.join("carol")
    with pytest.raises(RefusedError) as err:
        await carol.join("carol", room="dm-ab")
    assert err.value.code == "room_private"
    # a later joiner on a third gateway gets the history
    gw3 = await cluster.start("gateway")
    dave = await connect(gw3.ws)
    await dave.join("dave")
    history = dave.received("msgHistory", "main")[0]["data"]
    assert [m["id"] for m in history] == ["xgw-000001"]
    await bob.request("userLeave", {"room": "main"})
    assert (await alice.event("userLeave", "main"))["data"]["username"] == "bob"


async def test_killed_gateway_leaves_presence_within_ten_seconds(
    tmp_path, secantus_server, connect
):
    cluster = Cluster(tmp_path, machine_broker_url(), secantus_server.url)  # default heartbeats
    try:
        gw1, gw2 = await cluster.start_stack()
        alice = await connect(gw1.ws)
        bob = await connect(gw2.ws)
        await alice.join("alice")
        await bob.join("bob")
        await alice.users("main", ["alice", "bob"])
        gw2.signal(signal.SIGKILL)
        left = await alice.event("userLeave", "main", timeout=10)
        assert left["data"]["username"] == "bob"
        await alice.users("main", ["alice"], timeout=1)
    finally:
        await cluster.close()


async def test_no_gap_join_across_gateways(tmp_path, secantus_server, connect):
    cluster = Cluster(
        tmp_path,
        machine_broker_url(),
        secantus_server.url,
        rate_per_second="1000",
        rate_burst="1000",
    )
    try:
        gw1, gw2 = await cluster.start_stack()
        senders = [await connect(gw1.ws) for _ in range(2)]
        for i, sender in enumerate(senders):
            await sender.join(f"sender{i}")
        stop = asyncio.Event()
        sent: dict[str, list[str]] = {}

        async def send_loop(i: int) -> None:
            n = 0
            while not stop.is_set():
                sent.setdefault(f"s{i}", []).append(
                    (await senders[i].say("main", f"s{i}-{n}"))["id"]
                )
                n += 1

        loops = [asyncio.create_task(send_loop(i)) for i in range(2)]
        joiners = []
        for j in range(5):
            await asyncio.sleep(0.05)
            joiner = await connect(gw2.ws)
            await joiner.join(f"joiner{j}")
            joiners.append(joiner)
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*loops)
        for joiner in joiners:
            await assert_no_gap_no_duplicate(joiner, sent)
    finally:
        await cluster.close()


async def test_users_events_reach_every_connection_after_a_broker_restart(
    tmp_path, secantus_server, connect
):
    """Users' events come through one binding per gateway (`user.*.*`, bound at its start):
    after RabbitMQ restarts, an invitation still reaches the user's connections on every
    gateway (the binding is declared again with the queue)."""
    async with PrivateRabbitNode() as node:
        cluster = Cluster(tmp_path, node.url, secantus_server.url, heartbeat_interval="1")
        try:
            gw1, gw2 = await cluster.start_stack()
            alice = await connect(gw1.ws)
            ack = await alice.join("alice")
            alice_too = await connect(gw2.ws)
            await alice_too.join("alice", session=ack["session"])
            bob = await connect(gw2.ws)
            await bob.join("bob")
            await node.arestart()
            for attempt in range(5):  # newRoom allows bursts of 5
                room = f"dm-{attempt}"
                try:
                    await bob.join("bob", room=room)
                    await bob.request("newRoom", {"username2": "alice", "room": room})
                except RefusedError as exc:  # the services are reconnecting
                    assert exc.code == "unavailable", exc
                    await asyncio.sleep(2)
                    continue
                break
            else:
                pytest.fail("no invitation was accepted after the restart")
            for client in (alice, alice_too):
                invite = await client.wait_for(
                    lambda f, room=room: f["event"] == "newRoom" and f["data"]["room"] == room,
                    timeout=20,
                )
                assert invite["data"]["room"] == room
        finally:
            await cluster.close()
