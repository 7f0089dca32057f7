"""`TurnBatcher` (services/gateway/clients/batching.py), which presence joins and history read
states share: whatever a batch's request meets (an answer the gateway cannot read, a miscounted
one, a failure it did not foresee), every caller in it gets an error at once and it is logged;
no caller is left to its timeout, and the next batch goes out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from roomcast.gateway.clients.batching import TurnBatcher, Waiting
from roomcast.gateway.clients.presence import JoinBatcher
from roomcast.shared import rpc, topics
from roomcast.shared.bus import BusUnavailableError, InMemoryBus, Message
from roomcast.shared.errors import ProtocolError

pytestmark = pytest.mark.unit


class Echo(TurnBatcher[str]):
    """Answers each entry with itself, or as `reply` says."""

    task_name = "echo"
    refusal = "echo did not answer"

    def __init__(self, reply: Any = None) -> None:
        super().__init__(5.0, max_batch=10)
        self.reply = reply

    async def _ask(self, batch: list[Waiting[str]]) -> list[Any]:
        if isinstance(self.reply, BaseException):
            raise self.reply
        if self.reply is not None:
            return list(self.reply)
        return [w.entry.upper() for w in batch]


async def outcomes(batcher: Echo, entries: list[str]) -> list[Any]:
    async def one(entry: str) -> Any:
        try:
            return await batcher.submit(entry, batcher.deadline())
        except Exception as exc:
            return exc

    async with asyncio.timeout(2):  # far below the batcher's own 5 s: nobody waits for it
        return await asyncio.gather(*(one(e) for e in entries))


async def test_one_turns_entries_go_in_one_batch_each_with_its_answer() -> None:
    batcher = Echo()
    assert await outcomes(batcher, ["a", "b", "c"]) == ["A", "B", "C"]
    assert batcher.requests == 1


async def test_an_unforeseen_failure_reaches_every_caller_at_once_and_is_logged() -> None:
    batcher = Echo(ValueError("garbled"))
    with capture_logs() as logs:
        answers = await outcomes(batcher, ["a", "b"])
    assert all(isinstance(a, BusUnavailableError) and "garbled" in str(a) for a in answers)
    assert answers[0] is not answers[1]  # each caller raises its own
    assert any(e["event"] == "batched request failed" and e["batch"] == "echo" for e in logs)
    batcher.reply = None
    assert await outcomes(batcher, ["c"]) == ["C"]  # the next batch goes out


async def test_a_miscounted_answer_fails_the_batch_instead_of_pairing_wrongly() -> None:
    batcher = Echo(["only one"])
    with capture_logs() as logs:
        answers = await outcomes(batcher, ["a", "b"])
    assert all(isinstance(a, ProtocolError) and a.code == "internal" for a in answers)
    assert any(e["event"] == "batched answers miscounted" for e in logs)


async def test_a_join_batch_answered_with_garbage_fails_its_joins_at_once() -> None:
    """A presence whose batch reply is not JSON: before the shared batcher, JoinBatcher let the
    decoding error end its task, and every join of the batch waited for its timeout."""
    bus = InMemoryBus()
    await bus.connect()

    async def garbling(message: Message) -> None:
        await bus.reply(message, b"\xff not json")

    consumer = await bus.consume(
        topics.presence_queue("x"), [topics.presence_request("joins")], garbling
    )
    try:
        batcher = JoinBatcher(bus, 5.0)
        batcher.takes_batches = True
        requests = [
            rpc.JoinRequest(gateway="g", conn=f"c{n}", username=f"u{n}", room="r", session_hash="h")
            for n in range(3)
        ]

        async def one(request: rpc.JoinRequest) -> Any:
            try:
                return await batcher.join(request)
            except Exception as exc:
                return exc

        async with asyncio.timeout(2):
            answers = await asyncio.gather(*(one(r) for r in requests))
        assert all(isinstance(a, BusUnavailableError) for a in answers), answers
    finally:
        await consumer.close()
        await bus.close()
