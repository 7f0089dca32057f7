"""Read states asked of history in batches: in a join storm each join asks history for its
reader's `lastRead`/`unread`, and one request per join cost a request, a delivery, an ack and
a reply in history and in the broker each (history's CPU per read state was mostly AMQP).

`ReadStateBatcher` sends the read states asked within one turn of the event loop, or while
its previous batches were in flight, as one `read_states` query, whatever their rooms: history
has one queue with one active consumer, so the batch is answered after every write published
before it, as each of its reads would have been (no gap: each join bound its room before it
asked). Each read state keeps its own deadline, answer and error. A history that does not
take batches (an older one, in a rolling upgrade) is asked one at a time: read states go singly
until a reply advertises `rpc.BATCHES`, and again after a batch got no answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import structlog

from roomcast.shared import rpc, topics
from roomcast.shared.bus import Bus, BusTimeoutError, BusUnavailableError
from roomcast.shared.errors import ProtocolError

from ..metrics import READ_STATE_BATCH

log = structlog.get_logger(__name__)

MAX_IN_FLIGHT = 2  # batches awaiting their reply at once, per gateway


class _Waiting(NamedTuple):
    reader: rpc.Reader
    deadline: float
    answer: asyncio.Future[rpc.HistoryReply]


class ReadStateBatcher:
    def __init__(
        self,
        bus: Bus,
        timeout: float,
        *,
        max_batch: int = rpc.MAX_READ_STATE_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._wall = wall
        self._queue: deque[_Waiting] = deque()
        self._in_flight = 0
        self._flushing = False
        self._sending: set[asyncio.Task[None]] = set()
        self.takes_batches = False  # learnt from history's replies
        self.requests = 0  # batches sent (for tests)

    async def read_state(
        self, room: str, reader: str, username: str | None, timeout: float | None = None
    ) -> rpc.HistoryReply:
        """The reader's read state in the room (`messages` empty); raises `BusUnavailableError`
        when history does not answer within `timeout`, `ProtocolError` when it refuses."""
        timeout = timeout or self._timeout
        if not self.takes_batches:
            return await self._single(room, reader, username, timeout)
        waiting = _Waiting(
            rpc.Reader(room=room, reader=reader, username=username),
            self._wall() + timeout,
            asyncio.get_running_loop().create_future(),
        )
        self._queue.append(waiting)
        self._flush_soon()
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiting.answer)
        except TimeoutError as exc:
            self.takes_batches = False  # ask singly, and learn again from the reply
            raise BusTimeoutError(
                f"history did not answer a read state within {timeout:g}s"
            ) from exc
        finally:
            if not waiting.answer.done():
                waiting.answer.cancel()  # nobody waits: not sent, if it is still queued
            elif not waiting.answer.cancelled():
                waiting.answer.exception()  # an answer that came too late is not an error

    async def _single(
        self, room: str, reader: str, username: str | None, timeout: float
    ) -> rpc.HistoryReply:
        query = rpc.HistoryQuery(op="read_state", limit=1, reader=reader, username=username)
        reply = await rpc.call_reply(
            self._bus, topics.history_request(room), query, timeout=timeout, wall=self._wall
        )
        if rpc.BATCHES in reply.advertised and not self.takes_batches:
            self.takes_batches = True
            log.info("history takes batched read states")
        return rpc.HistoryReply.model_validate(reply.result)

    def _flush_soon(self) -> None:
        """Send what is queued at the end of this turn of the loop; while `max_in_flight`
        batches are out, read states wait for the next."""
        if not self._flushing and self._in_flight < self._max_in_flight:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        while self._queue and self._in_flight < self._max_in_flight:
            batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
            self._in_flight += 1
            task = asyncio.create_task(self._send(batch), name="history-read-states")
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Waiting]) -> None:
        try:
            batch = [w for w in batch if not w.answer.done()]  # their callers went away
            if batch:
                await self._ask(batch)
        except Exception as exc:  # never silent: each waiter gets it, and it is logged
            log.error("batched read states failed", error=repr(exc))
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(BusUnavailableError(repr(exc)))
        finally:
            self._in_flight -= 1
            self._flush_soon()

    async def _ask(self, batch: list[_Waiting]) -> None:
        deadline = max(w.deadline for w in batch)
        query = rpc.HistoryQuery(op="read_states", limit=1, readers=[w.reader for w in batch])
        self.requests += 1
        READ_STATE_BATCH.observe(len(batch))
        answers: list[rpc.HistoryReply | BaseException]
        try:
            raw = await self._bus.request(
                # any room's key reaches history's one queue; the entries name their rooms
                topics.history_request(batch[0].reader.room),
                rpc.encode(query),
                timeout=max(deadline - self._wall(), 0.001),
                headers={rpc.DEADLINE_HEADER: f"{deadline:.3f}"},
            )
            answers = _answers(raw, len(batch))
        except (BusUnavailableError, ProtocolError) as exc:
            if isinstance(exc, BusTimeoutError):
                self.takes_batches = False  # ask singly, and learn again from the reply
            answers = [exc] * len(batch)
        for waiting, answer in zip(batch, answers, strict=True):
            if waiting.answer.done():
                continue
            if isinstance(answer, BaseException):
                waiting.answer.set_exception(_own(answer))
            else:
                waiting.answer.set_result(answer)


def _answers(raw: bytes, count: int) -> list[rpc.HistoryReply | BaseException]:
    """Each reader's read state as a `HistoryReply`, or the error that reader gets; a refusal
    of the whole batch, or an answer of the wrong length, raises `ProtocolError`."""
    try:
        states = rpc.ReadStates.model_validate(rpc.result_of(raw)).states
    except ValueError as exc:
        raise ProtocolError("internal", f"a malformed read_states answer: {exc}") from exc
    if len(states) != count:
        raise ProtocolError("internal", f"{count} read states expected, {len(states)} came")
    return [
        ProtocolError.from_wire(s.error, "history could not tell the read state")
        if s.error is not None
        else rpc.HistoryReply(messages=[], last_read=s.last_read, unread=s.unread)
        for s in states
    ]


def _own(error: BaseException) -> BaseException:
    """A copy per waiter of an error a whole batch got: each caller raises its own."""
    if isinstance(error, ProtocolError):
        return ProtocolError(error.code, error.message)
    return type(error)(*error.args)
