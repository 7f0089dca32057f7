"""Settling a work queue's deliveries in groups: one `basic.ack multiple=true` per loop turn
for every finished delivery whose predecessors are all settled, instead of one ack each.

Why: history finishes ~25 deliveries in one loop turn (a batched write), and each ack was a
frame, a write-queue put and a drain future of its own.

Exactness: a multiple ack up to tag N settles every delivery of the channel up to N that is
still outstanding, so N is chosen only where every delivery up to it has finished with "ack"
or was already settled. A reject or requeue is sent singly, before the multiple ack that spans
it (frames leave in order, through one sender). A delivery that finished behind one still
running is acked singly in the same turn: it never waits for a slow predecessor (that would
hold its prefetch slot). Delivery tags are per aiormq channel, so one `GroupAcks` serves one
channel and dies with it; whatever it had not sent then is requeued by the broker itself.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque

import structlog
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq.abc import AbstractChannel

log = structlog.get_logger(__name__)


class Outcome(enum.Enum):
    ACK = "ack"
    REJECT = "reject"  # dropped: reject without requeue
    REQUEUE = "requeue"  # nack with requeue
    SENT = "sent"  # settled singly already, still waiting to leave the front of the order


class GroupAcks:
    """The settlements of one aiormq channel's deliveries, sent once per loop turn."""

    def __init__(self, channel: AbstractChannel, *, name: str = "") -> None:
        self.channel = channel
        self._name = name
        self._outstanding: deque[int] = deque()  # tags handed over, in delivery order
        self._finished: dict[int, Outcome] = {}
        self._frames: list[tuple[Outcome, int, bool]] = []  # (what, tag, multiple)
        self._scheduled = False
        self._sender: asyncio.Task[None] | None = None
        self.frames_sent = 0  # counted for tests and logs

    def delivered(self, tag: int) -> None:
        """A delivery was handed to its handler; call in delivery order, before any await."""
        self._outstanding.append(tag)

    def settle(self, tag: int, outcome: Outcome) -> None:
        """The handler of `tag` finished: its settlement leaves at the end of this loop turn."""
        self._finished[tag] = outcome
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    @property
    def pending(self) -> int:
        """Deliveries handed over whose settlement has not been sent yet."""
        return sum(1 for tag in self._outstanding if self._finished.get(tag) is not Outcome.SENT)

    def flush(self) -> None:
        """Turn what finished into frames now and start sending them."""
        self._scheduled = False
        frames = self._frames
        upto = 0
        outstanding, finished = self._outstanding, self._finished
        while outstanding:
            outcome = finished.get(outstanding[0])
            if outcome is None:
                break  # still running: nothing after it may be acked by a multiple ack
            tag = outstanding.popleft()
            del finished[tag]
            if outcome is Outcome.ACK:
                upto = tag
            elif outcome is not Outcome.SENT:
                frames.append((outcome, tag, False))  # before the multiple ack that spans it
        if upto:
            frames.append((Outcome.ACK, upto, True))
        for tag, outcome in finished.items():  # behind a delivery still running: singly
            if outcome is not Outcome.SENT:
                frames.append((outcome, tag, False))
                finished[tag] = Outcome.SENT
        if frames and (self._sender is None or self._sender.done()):
            self._sender = asyncio.get_running_loop().create_task(
                self._send(), name=f"bus-acks-{self._name}"
            )

    async def drain(self) -> None:
        """Send what has finished now and wait until it is handed to the connection's writer."""
        self.flush()
        while self._sender is not None and not self._sender.done():
            await asyncio.shield(self._sender)

    async def _send(self) -> None:
        """The one sender of this channel's settlements, so they leave in order."""
        channel = self.channel
        while self._frames:
            frames, self._frames = self._frames, []
            try:
                for outcome, tag, multiple in frames:
                    if outcome is Outcome.ACK:
                        await channel.basic_ack(tag, multiple=multiple, wait=False)
                    elif outcome is Outcome.REJECT:
                        await channel.basic_reject(tag, requeue=False, wait=False)
                    else:
                        await channel.basic_nack(tag, requeue=True, wait=False)
                    self.frames_sent += 1
            except CONNECTION_EXCEPTIONS as exc:
                # The channel is gone: the broker requeues whatever it had not been told.
                log.warning("could not settle deliveries", queue=self._name, error=repr(exc))
                self._frames.clear()
                return
            except Exception:
                log.exception("settling deliveries failed", queue=self._name)
                self._frames.clear()
                return
