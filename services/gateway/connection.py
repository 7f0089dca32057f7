"""One client's WebSocket: a reader, a writer and a bounded send queue.

Outgoing events are already-encoded text shared by every socket of a room; the queue holds
references, not copies. The queue is bounded in bytes and in age (PROTOCOL.md 2.2): a socket
whose unsent events pass `send_queue_bytes`, or whose oldest unsent event waited longer than
`send_queue_seconds`, is closed with 1013 and recovers with `since`, instead of growing the
gateway's memory. With `batch=1` the writer coalesces what is ready in one tick into a single
frame, one event per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from roomcast.shared.auth import Identity

from .metrics import FRAMES_OUT, SLOW_CLOSES
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from .replies import Replies

log = structlog.get_logger(__name__)

Send = Callable[[str | bytes], Awaitable[None]]  # text, or its UTF-8 bytes
Close = Callable[[int], Awaitable[None]]
Receive = Callable[[], Awaitable[str | bytes]]
TextHandler = Callable[["Connection", str | bytes], Awaitable[None]]
Expiry = Callable[["Connection"], None]

CLOSE_TOO_BIG = 1009
CLOSE_RESTART = 1012
CLOSE_TRY_LATER = 1013
_MAX_BATCH_BYTES = 256 * 1024
_CLOSE_SECONDS = 2.0


_FRAMES_OUT: dict[str, Callable[[float], None]] = {}


def count_out(event: str, n: int = 1) -> None:
    """`FRAMES_OUT.labels(event).inc(n)`, with the labelled child looked up once per event."""
    inc = _FRAMES_OUT.get(event)
    if inc is None:
        inc = _FRAMES_OUT[event] = FRAMES_OUT.labels(event).inc
    inc(n)


class BatchTicker:
    """One timer for every `batch=1` socket of a gateway: a socket with something queued waits
    for the next tick, and each tick wakes all of them, so a busy gateway pays one timer per
    tick rather than one per socket per wake-up."""

    def __init__(self, tick: float) -> None:
        self._tick = tick
        self._waiting: set[Callable[[], None]] = set()
        self._armed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake_on_tick(self, wake: Callable[[], None]) -> None:
        self._waiting.add(wake)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="batch-ticker")
        self._armed.set()

    async def _run(self) -> None:
        while True:
            await self._armed.wait()
            await asyncio.sleep(self._tick)
            self._armed.clear()
            waiting, self._waiting = self._waiting, set()
            for wake in waiting:
                wake()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass(slots=True)
class Limiters:
    """A connection's own rate budgets (the chat budget belongs to the user: `ChatGateway`)."""

    typing: TokenBucket
    joins: TokenBucket  # userJoin and userLeave together
    invites: TokenBucket
    reads: TokenBucket  # markRead: each one is a request to history and a write


class Connection:
    """A client connection as the gateway's domain sees it, independent of the web framework.
    Which rooms it is in is `Membership`'s to know.

    Slotted, and an idle writer waits on a bare future rather than an `asyncio.Event` (which
    carries a dict and a deque of waiters): at tens of thousands of idle sockets what each one
    holds is the gateway's memory (docs/performance.md, "Hot path, 2026-12-03")."""

    __slots__ = (
        "_clock",
        "_close",
        "_close_code",
        "_deadline",
        "_last_code",
        "_max_age",
        "_max_bytes",
        "_queue",
        "_queued_bytes",
        "_send",
        "_ticker",
        "_wakeup",
        "_woken",
        "_writer",
        "id",
        "identity",
        "limiters",
        "replies",
        "session",
        "session_hash",
        "username",
    )

    def __init__(
        self,
        send: Send,
        close: Close,
        *,
        ticker: BatchTicker | None,
        queue_bytes: int,
        queue_seconds: float,
        limiters: Limiters,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.username: str | None = None
        self.session: str | None = None
        self.session_hash: str | None = None
        self.identity: Identity | None = None  # signed in by a token (2.4)
        self._deadline: asyncio.TimerHandle | None = None
        self.limiters = limiters
        self._send = send
        self._close = close
        self._ticker = ticker
        self._max_bytes = queue_bytes
        self._max_age = queue_seconds
        self._clock = clock
        self._queue: deque[tuple[str | bytes, str, int, float]] = (
            deque()
        )  # frame, event, size, since
        self._queued_bytes = 0
        self._woken = False  # woken while the writer was busy: it looks at the queue again
        self._wakeup: asyncio.Future[None] | None = None  # what the idle writer waits on
        self._close_code: int | None = None
        self._last_code: int | None = None  # close with it once the queue is written
        self._writer: asyncio.Task[None] | None = None
        self.replies: Replies | None = None  # answers waiting behind a publish (made when needed)

    # outgoing -------------------------------------------------------------------------------
    def push(self, frame: str | bytes, event: str, size: int = 0) -> None:
        """Queue an event for this socket; close it (1013) if it is too far behind. `size` is
        the frame's length in UTF-8 bytes when the caller knows it (else its characters)."""
        count_out(event)
        self.enqueue(frame, event, size or len(frame), self._clock())

    def enqueue(self, frame: str | bytes, event: str, size: int, now: float) -> None:
        """`push` for the relay, which reads the clock and counts once per room event, not per
        socket. `frame` is text, or its UTF-8 bytes (written to the socket as they are)."""
        if self._close_code is not None:
            return
        queue = self._queue
        if queue and (
            self._queued_bytes + size > self._max_bytes or now - queue[0][3] > self._max_age
        ):
            self._too_slow()
            return
        queue.append((frame, event, size, now))
        self._queued_bytes += size
        if self._ticker is None:
            self._wake()
        elif len(queue) == 1:
            self._ticker.wake_on_tick(self._wake)

    def _wake(self) -> None:
        self._woken = True
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _too_slow(self) -> None:
        SLOW_CLOSES.inc()
        log.warning(
            "slow consumer disconnected",
            conn=self.id,
            queued=len(self._queue),
            queued_bytes=self._queued_bytes,
            oldest_seconds=round(self._clock() - self._queue[0][3], 3),
        )
        self._queue.clear()
        self._queued_bytes = 0
        self.close_soon(CLOSE_TRY_LATER)

    def finish(self, frame: str, event: str, code: int) -> None:
        """Send one last event, then close with `code`."""
        self.push(frame, event)
        self._last_code = code
        self._wake()

    def sign_in(self, identity: Identity, on_expiry: Expiry, wall: Callable[[], float]) -> None:
        """Hold the identity until its token expires, then call `on_expiry`; signing in again
        (a refreshed token) moves the deadline. One timer handle per signed-in socket."""
        self.identity = identity
        if self._deadline is not None:
            self._deadline.cancel()
        if self._writer is not None and self._writer.done():
            return  # the socket is gone already (a join that finished after it closed)
        delay = max(0.0, identity.exp - wall())
        self._deadline = asyncio.get_running_loop().call_later(delay, on_expiry, self)

    @property
    def is_closing(self) -> bool:
        return self._close_code is not None

    def close_soon(self, code: int) -> None:
        if self._close_code is None:
            self._close_code = code
            if self._writer is not None:
                self._writer.cancel()  # serve() sees it end, stops reading and closes

    # lifecycle ------------------------------------------------------------------------------
    async def serve(self, receive: Receive, on_text: TextHandler, max_chars: int) -> None:
        """Run until the client goes away or the server closes the socket."""
        self._writer = asyncio.create_task(self._write())
        tasks = [asyncio.create_task(self._read(receive, on_text, max_chars)), self._writer]
        if self._close_code is not None:  # closed before it started
            self._writer.cancel()
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            if self._deadline is not None:
                self._deadline.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._close_code is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_SECONDS):
                    await self._close(self._close_code)
                    # Read (and drop) what the client still sends until its close arrives:
                    # Hypercorn stops reading the socket while its queue to the app is full, and
                    # would then never see the client's close frame.
                    while True:
                        await receive()

    async def _read(self, receive: Receive, on_text: TextHandler, max_chars: int) -> None:
        while True:
            data = await receive()
            # The limit is in bytes (UTF-8 on the wire); Hypercorn's own check counts characters.
            if (
                isinstance(data, str)
                and len(data) * 4 > max_chars
                and len(data.encode()) > max_chars
            ):
                self.close_soon(CLOSE_TOO_BIG)
                return
            await on_text(self, data)
            # a frame that only produced an error awaited nothing: let the writer run
            await asyncio.sleep(0)

    async def _write(self) -> None:
        queue = self._queue
        batch = self._ticker is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._woken:
                self._wakeup = loop.create_future()
                try:
                    await self._wakeup
                finally:
                    self._wakeup = None
            self._woken = False
            while queue:
                if batch and len(queue) > 1:
                    frames: list[bytes] = []
                    size = 0
                    while queue and size < _MAX_BATCH_BYTES:
                        frame, _, frame_size, _ = queue.popleft()
                        frames.append(frame if isinstance(frame, bytes) else frame.encode())
                        size += frame_size
                    self._queued_bytes -= size
                    await self._send(b"\n".join(frames))
                else:
                    frame, _, frame_size, _ = queue.popleft()
                    self._queued_bytes -= frame_size
                    await self._send(frame)
            if self._last_code is not None:
                self._close_code = self._last_code  # serve() sees the writer end, and closes
                return
