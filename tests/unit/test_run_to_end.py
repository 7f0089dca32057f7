"""A broker call that must finish once started (a bind): aiormq closes the subscription's whole
channel when such a call is cancelled in flight, so neither the bound nor the caller's own
cancellation may cancel it; the caller still hears of the bound at once."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from roomcast.shared.bus import BusUnavailableError
from roomcast.shared.bus.rabbit.connection import run_to_end


class Call:
    """A broker call that answers when the test says so, and records how it ended."""

    def __init__(self, fail: bool = False) -> None:
        self.answer = asyncio.Event()
        self.ended: str | None = None
        self.fail = fail

    async def run(self) -> None:
        try:
            await self.answer.wait()
        except asyncio.CancelledError:
            self.ended = "cancelled"
            raise
        self.ended = "finished"
        if self.fail:
            raise ConnectionError("channel closed")


async def test_the_bound_tells_the_caller_and_the_call_runs_on() -> None:
    call = Call()
    with pytest.raises(BusUnavailableError, match=r"bind 'room\.x\.#': no answer"):
        await run_to_end("bind 'room.x.#'", 0.05, call.run())
    assert call.ended is None  # still waiting for the broker, not cancelled
    call.answer.set()
    await asyncio.sleep(0.01)
    assert call.ended == "finished"


async def test_a_cancelled_caller_does_not_cancel_the_call() -> None:
    call = Call()
    caller = asyncio.ensure_future(run_to_end("unbind", 10, call.run()))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    call.answer.set()
    await asyncio.sleep(0.01)
    assert call.ended == "finished"


async def test_a_failure_after_the_caller_left_is_logged() -> None:
    call = Call(fail=True)
    with capture_logs() as logs:
        with pytest.raises(BusUnavailableError):
            await run_to_end("bind 'user.bob.*'", 0.05, call.run())
        call.answer.set()
        await asyncio.sleep(0.01)
    assert [(e["event"], e["op"]) for e in logs] == [("broker call failed", "bind 'user.bob.*'")]


async def test_an_answer_in_time_returns_and_a_failure_in_time_raises() -> None:
    call = Call()
    call.answer.set()
    await run_to_end("bind", 1, call.run())
    failing = Call(fail=True)
    failing.answer.set()
    with pytest.raises(BusUnavailableError):
        await run_to_end("bind", 1, failing.run())
