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

import time
from collections.abc import Callable

import structlog

from roomcast.shared import rpc, topics
from roomcast.shared.bus import Bus
from roomcast.shared.errors import ProtocolError

from ..metrics import READ_STATE_BATCH
from .batching import MAX_IN_FLIGHT, TurnBatcher, Waiting

log = structlog.get_logger(__name__)


class ReadStateBatcher(TurnBatcher[rpc.Reader]):
    task_name = "history-read-states"
    refusal = "history did not answer a read state"

    def __init__(
        self,
        bus: Bus,
        timeout: float,
        *,
        max_batch: int = rpc.MAX_READ_STATE_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(timeout, max_batch=max_batch, max_in_flight=max_in_flight, wall=wall)
        self._bus = bus

    async def read_state(
        self, room: str, reader: str, username: str | None, timeout: float | None = None
    ) -> rpc.HistoryReply:
        """The reader's read state in the room (`messages` empty); raises `BusUnavailableError`
        when history does not answer within `timeout`, `ProtocolError` when it refuses."""
        timeout = timeout or self._timeout
        if not self.takes_batches:
            return await self._single(room, reader, username, timeout)
        entry = rpc.Reader(room=room, reader=reader, username=username)
        answer: rpc.HistoryReply = await self.submit(entry, self.deadline(timeout), timeout)
        return answer

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

    async def _ask(
        self, batch: list[Waiting[rpc.Reader]]
    ) -> list[rpc.HistoryReply | BaseException]:
        deadline = max(w.deadline for w in batch)
        query = rpc.HistoryQuery(op="read_states", limit=1, readers=[w.entry for w in batch])
        READ_STATE_BATCH.observe(len(batch))
        raw = await self._bus.request(
            # any room's key reaches history's one queue; the entries name their rooms
            topics.history_request(batch[0].entry.room),
            rpc.encode(query),
            timeout=max(deadline - self._wall(), 0.001),
            headers={rpc.DEADLINE_HEADER: f"{deadline:.3f}"},
        )
        return _answers(raw, len(batch))


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
