"""History then live with no gap, `since` recovery, and paging back over HTTP."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.checks import assert_no_gap_no_duplicate

pytestmark = pytest.mark.unit


async def test_since_recovers_exactly_the_missed_messages(connect):
    alice, bob = await connect(), await connect()
    await alice.join("alice")
    await bob.join("bob")
    last = await bob.say("main", "before")
    await bob.close()
    missed = [(await alice.say("main", f"missed {i}"))["id"] for i in range(3)]
    back = await connect()
    ack = await back.join("bob", session=bob.session, since=last["id"])
    assert ack["recovered"] is True
    history = back.received("msgHistory", "main")[0]["data"]
    assert [m["id"] for m in history] == missed


async def test_unknown_since_gives_newest_and_not_recovered(connect):
    alice = await connect()
    await alice.join("alice")
    await alice.say("main", "one")
    other = await connect()
    ack = await other.join("other", since="no-such-message")
    assert ack["recovered"] is False
    assert [m["body"] for m in other.received("msgHistory", "main")[0]["data"]] == ["one"]


@pytest.mark.settings(recovery_max=5, rate_burst=100)
async def test_too_many_missed_gives_the_newest_and_not_recovered(connect):
    alice = await connect()
    await alice.join("alice")
    first = await alice.say("main", "first")
    for i in range(8):
        await alice.say("main", f"m{i}")
    other = await connect()
    ack = await other.join("other", since=first["id"])
    assert ack["recovered"] is False
    history = other.received("msgHistory", "main")[0]["data"]
    assert [m["body"] for m in history] == [f"m{i}" for i in range(3, 8)]


@pytest.mark.settings(rate_burst=1000, rate_per_second=1000)
async def test_joiners_see_every_message_exactly_once_while_others_send(connect):
    """The guarantee: history then live, no gap and no duplicate, under concurrent sending."""
    senders = [await connect() for _ in range(3)]
    for i, sender in enumerate(senders):
        await sender.join(f"sender{i}")
    stop = asyncio.Event()
    sent: dict[str, list[str]] = {}

    async def send_loop(i: int) -> None:
        n = 0
        while not stop.is_set():
            ack = await senders[i].say("main", f"s{i}-{n}")
            sent.setdefault(f"s{i}", []).append(ack["id"])
            n += 1

    loops = [asyncio.create_task(send_loop(i)) for i in range(3)]
    joiners = []
    for j in range(6):
        await asyncio.sleep(0.02)
        joiner = await connect()
        await joiner.join(f"joiner{j}")
        joiners.append(joiner)
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*loops)
    for joiner in joiners:
        await assert_no_gap_no_duplicate(joiner, sent)
