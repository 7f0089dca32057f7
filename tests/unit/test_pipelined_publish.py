"""A connection's `updateChat` frames are published with several confirms in flight (issue 11):
the room gets them in the order sent, each ack follows its own confirm and the acks keep the
frames' order, and a publish that is not confirmed answers `unavailable` for that message only.

The gateway's bus is wrapped so that the test decides when (and whether) each chat publish is
confirmed: the message is routed at once, its confirm waits for the test's word.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from roomcast.shared.bus import BusUnavailableError
from tests.support.chat_client import ChatClient
from tests.support.inprocess import Server

COUNT = 5


class HeldConfirms:
    """Chat publishes are routed at once; each one's confirm waits until `confirm(i)`."""

    def __init__(self, publish: Any, fail: set[int]) -> None:
        self._publish = publish
        self._fail = fail
        self.routed: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.confirmed: list[int] = []
        self._gates: dict[int, asyncio.Event] = {}

    def gate(self, i: int) -> asyncio.Event:
        return self._gates.setdefault(i, asyncio.Event())

    async def publish(
        self, key: str, body: bytes, *, headers: Mapping[str, str] | None = None, **kw: Any
    ) -> None:
        if not key.endswith(".updateChat"):
            await self._publish(key, body, headers=headers, **kw)
            return
        i = len(self.routed)
        self.routed.append(i)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if i not in self._fail:
                await self._publish(key, body, headers=headers, **kw)
            await self.gate(i).wait()
        finally:
            self.in_flight -= 1
        if i in self._fail:
            raise BusUnavailableError("no confirm (test)")
        self.confirmed.append(i)


def _hold(server: Server, monkeypatch: pytest.MonkeyPatch, fail: set[int]) -> HeldConfirms:
    bus = server.system.gateway.bus
    held = HeldConfirms(bus.publish, fail)
    monkeypatch.setattr(bus, "publish", held.publish)
    return held


async def _send_all(alice: ChatClient) -> None:
    for i in range(COUNT):
        data = {"username": "alice", "body": f"m{i}", "time": 0, "room": "main"}
        await alice.send("updateChat", data, f"c{i}")


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(10):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


def _answers(client: ChatClient) -> list[tuple[str, str]]:
    return [
        (f["event"], f["ref"])
        for f in client.frames
        if f["event"] in ("ack", "error") and str(f.get("ref", "")).startswith("c")
    ]


async def test_order_kept_with_several_in_flight(server, connect, monkeypatch) -> None:
    alice: ChatClient = await connect()
    bob: ChatClient = await connect()
    await alice.join("alice")
    await bob.join("bob")
    held = _hold(server, monkeypatch, fail=set())
    await _send_all(alice)
    await _until(lambda: len(held.routed) == COUNT)
    assert held.most_in_flight == COUNT  # none waited for the one before it to be confirmed
    for i in range(COUNT):
        await bob.wait_for(
            lambda f, i=i: f["event"] == "updateChat" and f["data"]["body"] == f"m{i}"
        )
    assert [f["data"]["body"] for f in bob.received("updateChat", "main")] == [
        f"m{i}" for i in range(COUNT)
    ]
    await alice.settle(0.2)
    assert _answers(alice) == []  # nothing confirmed yet: no ack
    for i in range(COUNT):
        held.gate(i).set()
    await _until(lambda: len(_answers(alice)) == COUNT)
    assert _answers(alice) == [("ack", f"c{i}") for i in range(COUNT)]


async def test_acks_in_order_when_confirms_come_in_reverse(server, connect, monkeypatch) -> None:
    alice: ChatClient = await connect()
    await alice.join("alice")
    held = _hold(server, monkeypatch, fail=set())
    await _send_all(alice)
    await _until(lambda: len(held.routed) == COUNT)
    for i in reversed(range(1, COUNT)):
        held.gate(i).set()
    await _until(lambda: len(held.confirmed) == COUNT - 1)
    await alice.settle(0.2)
    assert _answers(alice) == []  # the first is not confirmed: no ack may pass it
    held.gate(0).set()
    await _until(lambda: len(_answers(alice)) == COUNT)
    assert _answers(alice) == [("ack", f"c{i}") for i in range(COUNT)]
    acked = [f["data"]["body"] for f in alice.frames if f["event"] == "ack" and "body" in f["data"]]
    assert acked == [f"m{i}" for i in range(COUNT)]


async def test_a_failure_in_the_middle_answers_unavailable_for_it_alone(
    server, connect, monkeypatch
) -> None:
    alice: ChatClient = await connect()
    bob: ChatClient = await connect()
    await alice.join("alice")
    await bob.join("bob")
    held = _hold(server, monkeypatch, fail={2})
    await _send_all(alice)
    await _until(lambda: len(held.routed) == COUNT)
    for i in range(COUNT):
        held.gate(i).set()
    await _until(lambda: len(_answers(alice)) == COUNT)
    assert _answers(alice) == [
        ("ack", "c0"),
        ("ack", "c1"),
        ("error", "c2"),
        ("ack", "c3"),
        ("ack", "c4"),
    ]
    error = next(f for f in alice.frames if f.get("ref") == "c2")
    assert error["data"]["code"] == "unavailable"
    await bob.wait_for(lambda f: f["event"] == "updateChat" and f["data"]["body"] == "m4")
    assert [f["data"]["body"] for f in bob.received("updateChat", "main")] == [
        "m0",
        "m1",
        "m3",
        "m4",
    ]
