"""A connection's first join binds its user's events (invitations, read markers) while presence
admits it, not after: in a reconnect storm the broker's binds, done one at a time, would
otherwise queue behind presence's answers. Nothing reaches the connection before it is admitted,
and a refused join leaves no binding behind."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from roomcast.shared import topics
from tests.support.chat_client import ChatClient, RefusedError

pytestmark = pytest.mark.unit


async def test_the_user_is_bound_while_presence_admits_the_join(
    server, connect, monkeypatch
) -> None:
    gw = server.system.gateway
    admit = asyncio.Event()
    asked = asyncio.Event()
    original = gw.presence.join

    async def held(*args: Any, **kw: Any) -> Any:
        asked.set()
        await admit.wait()
        return await original(*args, **kw)

    monkeypatch.setattr(gw.presence, "join", held)
    alice: ChatClient = await connect()
    joining = asyncio.create_task(alice.join("alice"))
    await asyncio.wait_for(asked.wait(), 10)
    pattern = topics.user_pattern("alice")
    async with asyncio.timeout(10):
        while gw.membership.bindings.serial(pattern) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert not gw.membership.user_connections("alice")  # not admitted: nothing reaches it yet
    admit.set()
    await joining
    assert list(gw.membership.user_connections("alice")) != []
    # an invitation reaches it (the binding was taken over by the connection)
    bob: ChatClient = await connect()
    await bob.join("bob", "pair")
    await bob.request("newRoom", {"username2": "alice", "room": "pair"})
    assert (await alice.event("newRoom"))["data"]["room"] == "pair"


async def test_a_refused_first_join_leaves_no_user_binding(server, connect) -> None:
    gw = server.system.gateway
    alice: ChatClient = await connect()
    await alice.join("alice")
    impostor: ChatClient = await connect()
    with pytest.raises(RefusedError, match="username_taken"):
        await impostor.join("alice", "lobby")
    pattern = topics.user_pattern("alice")
    await alice.close()
    # the impostor's bind was undone: once alice's socket is gone, nothing holds the pattern
    # (an unbind runs to its end behind the close, so it is waited for, within a bound)
    async with asyncio.timeout(10):
        while (  # noqa: ASYNC110 - a state of the gateway, no event to wait on
            gw.membership.user_connections("alice")
            or gw.membership.bindings.serial(pattern) is not None
        ):
            await asyncio.sleep(0.01)
    assert list(gw.membership.members("lobby")) == []
