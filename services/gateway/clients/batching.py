"""Requests to a service sent in batches: what callers ask within one turn of the event loop, or
while the previous batches are in flight, goes as one request, and the service answers each
entry in one reply.

Why: in a join storm every join asks presence to admit it and history for its read state; one
request per join costs a publish, a delivery, an ack and a reply in the service and in the broker
each. `TurnBatcher` keeps what each caller needs of its own: its deadline, its answer or its
error, and its timeout. A batch's failure of any kind reaches every caller in it (and the log),
never a caller left waiting. `takes_batches` is learnt from the service's replies by the
subclass (a service that does not take batches, an older one in a rolling upgrade, is asked one
entry at a time) and forgotten when a batch got no answer (an older replica may have taken
over).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import structlog

from roomcast.shared.bus import BusTimeoutError, BusUnavailableError
from roomcast.shared.errors import ProtocolError

log = structlog.get_logger(__name__)

MAX_IN_FLIGHT = 2  # batches awaiting their reply at once, per gateway and service

Entry = TypeVar("Entry")


class Waiting(NamedTuple, Generic[Entry]):
    entry: Entry
    deadline: float  # wall clock
    answer: asyncio.Future[Any]


class TurnBatcher(Generic[Entry]):
    """Subclasses say what a batch is (`_ask`) and name it (`task_name`, `refusal`)."""

    task_name = "batch"
    refusal = "the service did not answer"  # followed by " within <timeout>s"

    def __init__(
        self,
        timeout: float,
        *,
        max_batch: int,
        max_in_flight: int = MAX_IN_FLIGHT,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._wall = wall
        self._queue: deque[Waiting[Entry]] = deque()
        self._in_flight = 0
        self._flushing = False
        self._sending: set[asyncio.Task[None]] = set()
        self.takes_batches = False  # learnt from the service's replies
        self.requests = 0  # batches sent, for tests and metrics

    def deadline(self, timeout: float | None = None) -> float:
        """The wall-clock deadline of an entry asked now."""
        return self._wall() + (timeout or self._timeout)

    async def submit(self, entry: Entry, deadline: float, timeout: float | None = None) -> Any:
        """The service's answer to `entry`, or the error it got; `BusTimeoutError` when no
        answer came within `timeout` (the batcher's own by default)."""
        timeout = timeout or self._timeout
        waiting = Waiting(entry, deadline, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        self._flush_soon()
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiting.answer)
        except TimeoutError as exc:
            self.takes_batches = False  # ask singly, and learn again from the reply
            raise BusTimeoutError(f"{self.refusal} within {timeout:g}s") from exc
        finally:
            if not waiting.answer.done():
                waiting.answer.cancel()  # nobody waits: not sent, if it is still queued
            elif not waiting.answer.cancelled():
                waiting.answer.exception()  # an answer that came too late is not an error

    async def _ask(self, batch: list[Waiting[Entry]]) -> Sequence[Any]:
        """Send one batch; each entry's answer, or the exception that entry gets, in order."""
        raise NotImplementedError

    def _flush_soon(self) -> None:
        """Send what is queued at the end of this turn of the loop; while `max_in_flight`
        batches are out, entries wait for the next."""
        if not self._flushing and self._in_flight < self._max_in_flight:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        while self._queue and self._in_flight < self._max_in_flight:
            batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
            self._in_flight += 1
            task = asyncio.create_task(self._send(batch), name=self.task_name)
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Waiting[Entry]]) -> None:
        answers: Sequence[Any]
        try:
            batch = [w for w in batch if not w.answer.done()]  # their callers went away
            if not batch:
                return
            self.requests += 1
            try:
                answers = await self._ask(batch)
            except (BusUnavailableError, ProtocolError) as exc:
                if isinstance(exc, BusTimeoutError):
                    self.takes_batches = False  # ask singly, and learn again from the reply
                answers = [exc] * len(batch)
            except Exception as exc:  # never silent: each waiter gets it, and it is logged
                log.error("batched request failed", batch=self.task_name, error=repr(exc))
                answers = [BusUnavailableError(repr(exc))] * len(batch)
            if len(answers) != len(batch):
                log.error("batched answers miscounted", batch=self.task_name, sent=len(batch))
                wrong = ProtocolError("internal", f"{len(answers)} answers to {len(batch)}")
                answers = [wrong] * len(batch)
            for waiting, answer in zip(batch, answers, strict=True):
                if waiting.answer.done():
                    continue
                if isinstance(answer, BaseException):
                    waiting.answer.set_exception(_own(answer))
                else:
                    waiting.answer.set_result(answer)
        finally:
            self._in_flight -= 1
            self._flush_soon()


def _own(error: BaseException) -> BaseException:
    """A copy per waiter of an error a whole batch got: each caller raises its own."""
    if isinstance(error, ProtocolError):
        return ProtocolError(error.code, error.message)
    return type(error)(*error.args)
