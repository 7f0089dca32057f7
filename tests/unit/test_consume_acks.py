"""`GroupAcks` (shared/bus/rabbit/acks.py): one multiple ack per loop turn for the deliveries
that finished in order, exact settlements around a reject or requeue, singles behind a
delivery still running, and nothing more sent once the channel is gone."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiormq.abc import AbstractChannel
from aiormq.exceptions import ChannelInvalidStateError

from roomcast.shared.bus.rabbit.acks import GroupAcks, Outcome

pytestmark = pytest.mark.unit


class FakeChannel:
    """Records the settlement frames in the order they were sent."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []
        self.closed = False

    def _check(self) -> None:
        if self.closed:
            raise ChannelInvalidStateError("closed (test)")

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self._check()
        assert wait is False
        self.frames.append(("ack", tag, multiple))

    async def basic_reject(self, tag: int, *, requeue: bool = True, wait: bool = True) -> None:
        self._check()
        assert requeue is False and wait is False
        self.frames.append(("reject", tag, False))

    async def basic_nack(
        self, tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True
    ) -> None:
        self._check()
        assert requeue is True and multiple is False and wait is False
        self.frames.append(("requeue", tag, False))


def make(n: int) -> tuple[GroupAcks, FakeChannel]:
    channel = FakeChannel()
    acks = GroupAcks(cast(AbstractChannel, channel), name="test")
    for tag in range(1, n + 1):
        acks.delivered(tag)
    return acks, channel


async def turns(k: int = 3) -> None:
    for _ in range(k):
        await asyncio.sleep(0)


def broker_view(frames: list[tuple[str, int, bool]], delivered: int) -> dict[int, str]:
    """What a broker makes of the frames: each tag's one settlement; a second one, or a
    multiple ack up to a settled tag, fails the test as RabbitMQ would close the channel."""
    settled: dict[int, str] = {}
    for what, tag, multiple in frames:
        assert tag not in settled, f"{tag} settled twice"
        if multiple:
            for earlier in range(1, tag):
                settled.setdefault(earlier, what)
        settled[tag] = what
    assert all(1 <= tag <= delivered for tag in settled)
    return settled


async def test_a_turn_of_in_order_finishes_is_one_multiple_ack() -> None:
    acks, channel = make(25)
    for tag in range(1, 26):
        acks.settle(tag, Outcome.ACK)
    await turns()
    assert channel.frames == [("ack", 25, True)]
    assert acks.pending == 0


async def test_each_turn_sends_its_own_group() -> None:
    acks, channel = make(10)
    for tag in range(1, 6):
        acks.settle(tag, Outcome.ACK)
    await turns()
    for tag in range(6, 11):
        acks.settle(tag, Outcome.ACK)
    await turns()
    assert channel.frames == [("ack", 5, True), ("ack", 10, True)]


async def test_a_reject_and_a_requeue_in_the_middle_stay_exact() -> None:
    acks, channel = make(6)
    outcomes = [Outcome.ACK, Outcome.REJECT, Outcome.ACK, Outcome.REQUEUE, Outcome.ACK]
    for tag, outcome in enumerate(outcomes, start=1):
        acks.settle(tag, outcome)
    await turns()
    assert channel.frames == [("reject", 2, False), ("requeue", 4, False), ("ack", 5, True)]
    assert broker_view(channel.frames, 6) == {
        1: "ack",
        2: "reject",
        3: "ack",
        4: "requeue",
        5: "ack",
    }
    assert acks.pending == 1  # the sixth still runs


async def test_finishes_behind_a_running_delivery_are_acked_singly_in_the_same_turn() -> None:
    acks, channel = make(5)
    for tag in (1, 3, 4):
        acks.settle(tag, Outcome.ACK)
    acks.settle(5, Outcome.REJECT)
    await turns()
    assert channel.frames == [
        ("ack", 1, True),
        ("ack", 3, False),
        ("ack", 4, False),
        ("reject", 5, False),
    ]
    channel.frames.clear()
    acks.settle(2, Outcome.ACK)  # the slow one; 3-5 were settled already
    await turns()
    assert channel.frames == [("ack", 2, True)]
    assert acks.pending == 0


async def test_a_multiple_ack_never_ends_on_a_delivery_settled_singly() -> None:
    """Tags 3 and 4 went singly; once 2 finishes, the group ends at 2, and 5 is its own."""
    acks, channel = make(5)
    acks.settle(1, Outcome.ACK)
    acks.settle(3, Outcome.ACK)
    acks.settle(4, Outcome.ACK)
    await turns()
    acks.settle(2, Outcome.ACK)
    acks.settle(5, Outcome.ACK)
    await turns()
    view = broker_view(channel.frames, 5)
    assert view == dict.fromkeys(range(1, 6), "ack")
    assert channel.frames[-1] == ("ack", 5, True)


async def test_order_of_frames_holds_across_turns_while_sending() -> None:
    acks, channel = make(4)
    acks.settle(1, Outcome.REQUEUE)
    acks.flush()
    acks.settle(2, Outcome.ACK)
    acks.flush()  # a second flush before the sender ran: same sender, same order
    await turns()
    assert channel.frames == [("requeue", 1, False), ("ack", 2, True)]


async def test_drain_sends_what_finished_before_it_returns() -> None:
    acks, channel = make(3)
    acks.settle(1, Outcome.ACK)
    acks.settle(2, Outcome.ACK)
    await acks.drain()
    assert channel.frames == [("ack", 2, True)]


async def test_a_closed_channel_stops_the_sender_and_is_logged(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    acks, channel = make(3)
    channel.closed = True
    acks.settle(1, Outcome.ACK)
    await turns()
    assert channel.frames == []
    assert acks._sender is not None and acks._sender.done()
    assert acks._sender.exception() is None
    out = capsys.readouterr()
    assert "could not settle deliveries" in out.out + out.err + caplog.text


async def test_a_random_mix_is_settled_exactly_once_each() -> None:
    import random

    rng = random.Random(11)
    n = 300
    acks, channel = make(n)
    expected: dict[int, str] = {}
    order = list(range(1, n + 1))
    # mostly in order, with some out of order, like concurrent handlers
    for i in range(0, n - 1, 7):
        order[i], order[i + 1] = order[i + 1], order[i]
    names: dict[Outcome, Any] = {
        Outcome.ACK: "ack",
        Outcome.REJECT: "reject",
        Outcome.REQUEUE: "requeue",
    }
    for i, tag in enumerate(order):
        outcome = rng.choices(list(names), weights=[90, 5, 5])[0]
        expected[tag] = names[outcome]
        acks.settle(tag, outcome)
        if i % 13 == 0:
            await turns(1)
    await turns()
    assert broker_view(channel.frames, n) == expected
    assert len(channel.frames) < n // 2
    assert acks.pending == 0
