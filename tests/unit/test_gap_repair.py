"""Gap repair (services/gateway/repair.py) on the in-process server: after deliveries may have
been lost, each socket gets every stored message it missed exactly once, and none it had; when
history cannot answer, the room's sockets are closed with 1013 so their clients recover with
`since`. Gaps come from the test (`on_gap` called directly, messages stored behind the gateway's
back), from a real inbox overflow, and from the in-memory bus's `outage()`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from roomcast.shared import topics
from roomcast.shared.frames import encode_event
from roomcast.shared.models import ChatMessage
from roomcast.shared.topics import Header
from tests.support.chat_client import ChatClient, Frame, RefusedError
from tests.unit.test_bad_input import closed_by_server, local_metric

pytestmark = pytest.mark.unit


def is_chat(body: str) -> Callable[[Frame], bool]:
    return lambda f: f["event"] == "updateChat" and f["data"]["body"] == body


def behind_the_back(room: str, body: str, username: str = "ghost") -> ChatMessage:
    """A message stored without the gateway seeing it (as if its delivery had been lost)."""
    return ChatMessage(
        id=f"lost-{uuid.uuid4().hex[:12]}",
        username=username,
        body=body,
        time=int(time.time() * 1000),
        room=room,
    )


def chat_ids(client: ChatClient, room: str) -> list[str]:
    return [f["data"]["id"] for f in client.received("updateChat", room)]


async def fence(sender: ChatClient, room: str, *receivers: ChatClient) -> Any:
    body = f"fence-{uuid.uuid4().hex[:8]}"
    ack = await sender.say(room, body)
    for receiver in receivers:
        await receiver.wait_for(is_chat(body))
    return ack


async def two_in(connect: Any, room: str) -> tuple[ChatClient, ChatClient]:
    alice: ChatClient = await connect()
    await alice.join("alice", room)
    bob: ChatClient = await connect()
    await bob.join("bob", room)
    await alice.wait_for(lambda f: f["event"] == "userJoin" and f["data"]["username"] == "bob")
    return alice, bob


async def test_a_repair_relays_each_missing_message_once_and_none_already_seen(connect, server):
    gateway = server.system.gateway
    alice, bob = await two_in(connect, "gap")
    m1 = await alice.say("gap", "m1")
    await bob.wait_for(is_chat("m1"))
    m2 = await bob.say("gap", "m2")
    await alice.wait_for(is_chat("m2"))

    lost = [behind_the_back("gap", "lost 1"), behind_the_back("gap", "lost 2")]
    already = ChatMessage.model_validate(m2)  # stored already: the store keeps one copy
    await server.messages.insert_many([already, *lost])
    # Deliveries may be repaired while later ones still arrive (an inbox overflow reports its
    # gap with messages still queued): start the repair before m2, which both sockets have
    # (alice live, bob as its sender), so the answer holds a message they must not get again.
    assert gateway.relay.last_ids["gap"] == m2["id"]
    gateway.relay.last_ids["gap"] = m1["id"]
    repaired = local_metric("roomcast_gateway_gap_messages_total")

    await gateway.repairer.on_gap()
    await gateway.repairer.wait()

    await fence(alice, "gap", bob)
    await fence(bob, "gap", alice)
    lost_ids = [m.id for m in lost]
    assert chat_ids(alice, "gap")[:-1] == [m2["id"], *lost_ids]
    assert chat_ids(bob, "gap")[:-1] == [m1["id"], *lost_ids]
    assert local_metric("roomcast_gateway_gap_messages_total") == repaired + 2
    # Nothing else happened to the sockets; a second repair finds nothing to relay.
    await gateway.repairer.on_gap()
    await gateway.repairer.wait()
    await fence(alice, "gap", bob)
    assert Counter(chat_ids(bob, "gap")).most_common(1)[0][1] == 1
    assert not alice.closed.done() and not bob.closed.done()


async def test_a_repair_does_not_touch_other_rooms_messages(connect, server):
    gateway = server.system.gateway
    alice, bob = await two_in(connect, "gap")
    carol: ChatClient = await connect()
    await carol.join("carol", "elsewhere")
    await alice.say("gap", "m1")  # the room's bookmark
    await bob.wait_for(is_chat("m1"))
    lost = behind_the_back("gap", "lost")
    await server.messages.insert_many([lost])

    await gateway.repairer.on_gap()
    await gateway.repairer.wait()
    await alice.wait_for(is_chat("lost"))
    await bob.wait_for(is_chat("lost"))
    await fence(alice, "gap", bob)
    other: ChatClient = await connect()
    await other.join("dave", "elsewhere")
    await fence(other, "elsewhere", carol)
    assert carol.received("updateChat", "gap") == []
    assert len(carol.received("updateChat")) == 1


@pytest.mark.settings(bus_inbox_limit=100)
async def test_an_inbox_overflow_is_repaired_and_every_message_arrives_once(connect, server):
    """A real gap: 150 chat messages reach the gateway's subscription at once (published without
    yielding), its inbox keeps 100 and drops 50, then reports the gap; history has all 150."""
    bus = server.system.bus
    alice, bob = await two_in(connect, "flood")
    await fence(alice, "flood", bob)
    dropped = local_metric(
        "roomcast_bus_inbox_dropped_total", subscription=server.system.gateway.id
    )
    ids = [f"flood-{i:04d}" for i in range(150)]
    for i, message_id in enumerate(ids):
        data = {"id": message_id, "username": "ghost", "body": f"f{i}", "time": 1, "room": "flood"}
        await bus.publish(
            topics.room_event("flood", "updateChat"),
            encode_event("updateChat", data, room="flood").encode(),
            headers={Header.MESSAGE_ID: message_id, Header.PUBLICATION: f"pub-{i}"},
        )
    after = local_metric("roomcast_bus_inbox_dropped_total", subscription=server.system.gateway.id)
    assert after - dropped == 50, "the inbox did not overflow as the test meant it to"

    for client in (alice, bob):
        await client.wait_for(is_chat("f149"), timeout=20)
        async with asyncio.timeout(20):
            while set(ids) - set(chat_ids(client, "flood")):
                await client.wait_for(lambda f: f["event"] == "updateChat", timeout=20)
    await server.system.gateway.repairer.wait()
    await fence(alice, "flood", bob)
    await fence(bob, "flood", alice)
    for client in (alice, bob):
        got = Counter(chat_ids(client, "flood"))
        assert {i: n for i, n in got.items() if n != 1} == {}
        assert set(ids) <= set(got)


@pytest.mark.settings(request_timeout=0.5)
async def test_history_down_makes_a_repair_close_the_rooms_sockets_1013(connect, server):
    gateway, history = server.system.gateway, server.system.history
    alice, bob = await two_in(connect, "gap")
    await alice.say("gap", "m1")
    await bob.wait_for(is_chat("m1"))
    idle: ChatClient = await connect()  # in no room: nothing to repair for it
    closed = local_metric("roomcast_gateway_gap_repairs_total", outcome="closed")

    await history.stop()
    try:
        with capture_logs() as logs:
            await gateway.repairer.on_gap()
            async with asyncio.timeout(30):
                await gateway.repairer.wait()
        assert await closed_by_server(alice) == 1013
        assert await closed_by_server(bob) == 1013
    finally:
        await history.start()

    retries = [e for e in logs if e["event"] == "gap repair: history did not answer"]
    assert len(retries) == 3 and all(e["room"] == "gap" for e in retries), retries
    gave_up = [
        e for e in logs if e["event"] == "gap repair impossible; sockets told to recover with since"
    ]
    assert len(gave_up) == 1, logs
    assert gave_up[0]["log_level"] == "warning" and gave_up[0]["room"] == "gap"
    assert gave_up[0]["sockets"] == 2
    assert local_metric("roomcast_gateway_gap_repairs_total", outcome="closed") == closed + 1
    assert not idle.closed.done()
    # The client recovers with `since` and misses nothing.
    again: ChatClient = await connect()
    ack = await again.join("alice", "gap", session=alice.session, since=chat_ids(bob, "gap")[-1])
    assert ack["recovered"] is True


async def test_the_end_of_a_bus_outage_repairs_the_rooms(connect, server):
    alice, bob = await two_in(connect, "gap")
    await alice.say("gap", "m1")
    await bob.wait_for(is_chat("m1"))
    lost = behind_the_back("gap", "stored during the outage")

    async with server.system.bus.outage():
        with pytest.raises(RefusedError) as refused:
            await alice.say("gap", "not sent")
        assert refused.value.code == "unavailable"
        await server.messages.insert_many([lost])

    await alice.wait_for(is_chat("stored during the outage"))
    await bob.wait_for(is_chat("stored during the outage"))
    await server.system.gateway.repairer.wait()
    await fence(alice, "gap", bob)
    await fence(bob, "gap", alice)
    for client in (alice, bob):
        assert Counter(chat_ids(client, "gap"))[lost.id] == 1
        assert client.received("updateChat", "gap")[-2]["data"]["body"] != "not sent"
    assert [m.body for m in await server.messages.newest("gap", 10)][:2] == [
        "m1",
        "stored during the outage",
    ]


async def test_a_repair_starts_where_the_loss_began_not_after_later_live_messages(connect, server):
    """After a reconnect, messages published after the gap can reach the relay before the
    repair asks history (RabbitMQ restores the consumer before it reports the gap): the repair
    must start from the last message relayed before the loss, or it skips what was lost."""
    gateway = server.system.gateway
    inbox = gateway._subscription.inbox
    alice, bob = await two_in(connect, "gap")
    await fence(alice, "gap", bob)
    inbox.lost()  # the connection drops: deliveries may be lost from here
    lost = behind_the_back("gap", "lost in the gap")
    await server.messages.insert_many([lost])
    after = await fence(alice, "gap", bob)  # the new queue's first delivery, relayed at once
    assert gateway.relay.last_ids["gap"] == after["id"]
    inbox.gap("reconnect")  # only now is the gap reported

    for client in (alice, bob):
        await client.wait_for(is_chat("lost in the gap"))
    await gateway.repairer.wait()
    await fence(bob, "gap", alice)
    for client in (alice, bob):
        assert Counter(chat_ids(client, "gap"))[lost.id] == 1
        assert Counter(chat_ids(client, "gap")).most_common(1)[0][1] == 1


def deferrals() -> float:
    return local_metric("roomcast_gateway_gap_repairs_total", outcome="deferred")


@pytest.mark.settings(request_timeout=0.5)
async def test_a_repair_the_bus_cannot_carry_waits_for_the_next_reconnect(connect, server):
    """A second broker outage while a repair runs: the repair fails for want of a bus, keeps
    its start instead of closing the sockets, and the next reconnect's repair delivers what
    both outages lost, once."""
    gateway, bus = server.system.gateway, server.system.bus
    alice, bob = await two_in(connect, "gap")
    await fence(alice, "gap", bob)
    deferred = deferrals()
    first, second = behind_the_back("gap", "first outage"), behind_the_back("gap", "second")
    async with bus.outage():
        await server.messages.insert_many([first])
    async with bus.outage():  # the repair the first one started runs into it
        await server.messages.insert_many([second])
        async with asyncio.timeout(30):
            while deferrals() == deferred:  # noqa: ASYNC110 - a metric has no event
                await asyncio.sleep(0.05)
    for client in (alice, bob):
        await client.wait_for(is_chat("second"), timeout=30)
    await gateway.repairer.wait()
    await fence(bob, "gap", alice)
    for client in (alice, bob):
        got = Counter(chat_ids(client, "gap"))
        assert got[first.id] == 1 and got[second.id] == 1
        assert got.most_common(1)[0][1] == 1
        assert not client.closed.done()
