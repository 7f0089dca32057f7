"""Users' events (invitations, read markers) come through one binding per gateway, made when its
subscription starts, and are routed locally by username: a join makes no broker bind for its
user (RabbitMQ's costliest operation, once per connection in a join storm). Nothing reaches a
connection before presence admitted it, every connection of the user gets them, a refused join
leaves no per-user state behind, and the binding outlives a broker outage."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from roomcast.shared import topics
from tests.support.chat_client import ChatClient, RefusedError

pytestmark = pytest.mark.unit


def _binds(gw: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The patterns the gateway binds on the broker from now on."""
    subscription = gw._subscription
    original = subscription.bind
    bound: list[str] = []

    async def bind(pattern: str) -> None:
        bound.append(pattern)
        await original(pattern)

    monkeypatch.setattr(subscription, "bind", bind)
    return bound


async def test_a_join_binds_its_room_and_nothing_for_its_user(server, connect, monkeypatch) -> None:
    gw = server.system.gateway
    assert gw.membership.bindings.serial(topics.USER_EVENTS) is not None  # since the start
    bound = _binds(gw, monkeypatch)
    alice: ChatClient = await connect()
    await alice.join("alice", "lobby")
    await alice.join("alice", "attic")
    assert bound == [topics.room_pattern("lobby"), topics.room_pattern("attic")]


async def test_an_invitation_reaches_every_admitted_connection_of_the_user(
    server, connect, monkeypatch
) -> None:
    gw = server.system.gateway
    first: ChatClient = await connect()
    ack = await first.join("alice", "lobby")
    second: ChatClient = await connect()
    await second.join("alice", "attic", session=ack["session"])
    # a third connection of alice's, held by presence: not admitted, so nothing reaches it
    admit, asked = asyncio.Event(), asyncio.Event()
    original = gw.presence.join

    async def held(*args: Any, **kw: Any) -> Any:
        asked.set()
        await admit.wait()
        return await original(*args, **kw)

    monkeypatch.setattr(gw.presence, "join", held)
    third: ChatClient = await connect()
    joining = asyncio.create_task(third.join("alice", "cellar", session=ack["session"]))
    await asyncio.wait_for(asked.wait(), 10)
    monkeypatch.setattr(gw.presence, "join", original)
    bob: ChatClient = await connect()
    await bob.join("bob", "pair")
    await bob.join("bob", "pair2")
    await bob.request("newRoom", {"username2": "alice", "room": "pair"})
    assert (await first.event("newRoom"))["data"]["room"] == "pair"
    assert (await second.event("newRoom"))["data"]["room"] == "pair"
    admit.set()
    await joining
    assert len(list(gw.membership.user_connections("alice"))) == 3
    await bob.request("newRoom", {"username2": "alice", "room": "pair2"})
    # the third connection gets the invitation made after its admission, not the one before
    assert (await third.event("newRoom"))["data"]["room"] == "pair2"
    assert (await first.event("newRoom"))["data"]["room"] == "pair2"


async def test_a_refused_first_join_leaves_no_user_state(server, connect) -> None:
    gw = server.system.gateway
    alice: ChatClient = await connect()
    await alice.join("alice")
    impostor: ChatClient = await connect()
    with pytest.raises(RefusedError, match="username_taken"):
        await impostor.join("alice", "lobby")
    assert len(list(gw.membership.user_connections("alice"))) == 1
    await alice.close()
    async with asyncio.timeout(10):
        while gw.membership.user_connections("alice"):  # noqa: ASYNC110 - the close runs behind
            await asyncio.sleep(0.01)
    assert list(gw.membership.members("lobby")) == []
    assert gw.membership.bindings.serial(topics.user_pattern("alice")) is None
    assert gw.membership.bindings.serial(topics.USER_EVENTS) is not None  # the gateway's own


async def test_users_events_flow_again_after_a_broker_outage(server, connect) -> None:
    gw = server.system.gateway
    alice: ChatClient = await connect()
    await alice.join("alice", "lobby")
    bob: ChatClient = await connect()
    await bob.join("bob", "pair")
    async with gw.bus.outage():
        pass
    await bob.request("newRoom", {"username2": "alice", "room": "pair"})
    assert (await alice.event("newRoom"))["data"]["room"] == "pair"
