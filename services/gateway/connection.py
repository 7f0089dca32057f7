"""One client's WebSocket: its frames read in the socket's own task, and a bounded send queue
flushed at the end of the loop iteration, or once per short interval while the gateway is busy.

Outgoing events are already-encoded text shared by every socket of a room; the queue holds
references, not copies. The first event queued asks the loop's `FlushScheduler` for one flush
(`flushing.py`), which writes what queued meanwhile: at the end of the iteration while the
gateway is idle, so nothing waits between an event and its write, and at most once per interval
while it is busy, so the events of several iterations share a write. With `batch=1` that is one
frame, one event per line; without, one frame per event, written in one call. While the
transport is above its high-water mark a task waits for it to drain and events queue meanwhile
(coalesced again for `batch=1`). The queue is bounded in bytes and in age (PROTOCOL.md 2.2): a socket whose
unsent events pass `send_queue_bytes`, or whose oldest unsent event waited longer than
`send_queue_seconds`, is closed with 1013 and recovers with `since`, instead of growing the
gateway's memory.

An idle socket holds no task of its own (Hypercorn's tasks serve it) and no queue: both exist
only while something is waiting to be written (tests/unit/test_socket_memory.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from roomcast.shared.auth import Identity

from .flushing import FlushScheduler, scheduler
from .metrics import FRAMES_OUT, SLOW_CLOSES
from .ratelimit import TokenBucket
from .rawsend import Sink, batches

if TYPE_CHECKING:
    from .replies import Replies

log = structlog.get_logger(__name__)

Send = Callable[[str | bytes], Awaitable[None]]  # text, or its UTF-8 bytes
Close = Callable[[int], Awaitable[None]]
Receive = Callable[[], Awaitable[str | bytes]]
TextHandler = Callable[["Connection", str | bytes], Awaitable[None]]
Expiry = Callable[["Connection"], None]
Pending = tuple[str | bytes, int, float]  # frame, size, since

CLOSE_TOO_BIG = 1009
CLOSE_RESTART = 1012
CLOSE_TRY_LATER = 1013
_CLOSE_SECONDS = 2.0
_GONE = 0  # `_close_code` of a socket whose client went away (nothing left to close)


_FRAMES_OUT: dict[str, Callable[[float], None]] = {}


def count_out(event: str, n: int = 1) -> None:
    """`FRAMES_OUT.labels(event).inc(n)`, with the labelled child looked up once per event."""
    inc = _FRAMES_OUT.get(event)
    if inc is None:
        inc = _FRAMES_OUT[event] = FRAMES_OUT.labels(event).inc
    inc(n)


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

    Slotted, with no task, queue or future of its own while idle: at tens of thousands of idle
    sockets what each one holds is the gateway's memory (docs/performance.md)."""

    __slots__ = (
        "_batch",
        "_clock",
        "_close",
        "_close_code",
        "_deadline",
        "_flusher",
        "_flushes",
        "_last_code",
        "_max_age",
        "_max_bytes",
        "_pending",
        "_queued_bytes",
        "_reader",
        "_sink",
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
        send: Sink | Send,
        close: Close,
        *,
        batch: bool = False,
        queue_bytes: int,
        queue_seconds: float,
        limiters: Limiters,
        clock: Callable[[], float] = time.monotonic,
        ticker: object = None,  # deprecated: a ticker meant batch=1 (there is no tick now)
        flushes: FlushScheduler | None = None,  # the loop's own (`flushing.scheduler`) if None
    ) -> None:
        self.id = uuid.uuid4().hex
        self.username: str | None = None
        self.session: str | None = None
        self.session_hash: str | None = None
        self.identity: Identity | None = None  # signed in by a token (2.4)
        self._deadline: asyncio.TimerHandle | None = None
        self.limiters = limiters
        self._sink = send if isinstance(send, Sink) else Sink(send)
        self._close = close
        self._batch = batch or ticker is not None
        self._max_bytes = queue_bytes
        self._max_age = queue_seconds
        self._clock = clock
        self._flushes = flushes if flushes is not None else scheduler()
        # unsent events, made by the first one queued and dropped once they are written; a
        # flush is scheduled exactly while it is not None and no `_flusher` runs
        self._pending: list[Pending] | None = None
        self._queued_bytes = 0
        self._flusher: asyncio.Task[None] | None = None  # only under back-pressure
        self._reader: asyncio.Task[object] | None = None  # the socket's own task, while reading
        self._close_code: int | None = None
        self._last_code: int | None = None  # close with it once the queue is written
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
        pending = self._pending
        if pending is None:
            self._pending = [(frame, size, now)]
            self._queued_bytes = size
            if self._flusher is None:
                self._flushes.want(self)
            return
        if self._queued_bytes + size > self._max_bytes or now - pending[0][2] > self._max_age:
            self._too_slow()
            return
        pending.append((frame, size, now))
        self._queued_bytes += size
        if self._flusher is None and (
            self._queued_bytes * 2 >= self._max_bytes or (now - pending[0][2]) * 2 >= self._max_age
        ):
            self.flush()  # halfway to a bound while paced (flushing.py): written now, not closed

    def flush(self) -> None:
        """Write what queued since the last flush, now (`flushing.py` says when that is); wait
        for a drain in a task only when the transport is above its high-water mark or the socket
        cannot be written directly."""
        pending = self._pending
        if self._flusher is not None or pending is None or self._close_code is not None:
            return
        payloads = [f if isinstance(f, bytes) else f.encode() for f, _, _ in pending]
        if not self._sink.write(payloads, self._batch):
            self._flusher = asyncio.get_running_loop().create_task(self._send_slowly())
            return
        self._pending = None
        self._queued_bytes = 0
        if self._sink.blocked():
            self._flusher = asyncio.get_running_loop().create_task(self._drain())
        elif self._last_code is not None:
            self.close_soon(self._last_code)

    async def _drain(self) -> None:
        try:
            await self._sink.drain()
        finally:
            self._flusher = None
        self.flush()

    async def _send_slowly(self) -> None:
        """The path through the server's own send (ASGI): one awaited send per frame."""
        try:
            while self._pending:
                pending, self._pending = self._pending, None
                self._queued_bytes = 0
                payloads = [f if isinstance(f, bytes) else f.encode() for f, _, _ in pending]
                if self._batch and len(payloads) > 1:
                    for text in batches(payloads):
                        await self._sink.send(text)
                else:
                    for payload in payloads:
                        await self._sink.send(payload)
        except Exception:  # the socket is gone: its reader sees the disconnect
            self._pending = None
            self._queued_bytes = 0
            return
        finally:
            self._flusher = None
        if self._last_code is not None:
            self.close_soon(self._last_code)

    def _too_slow(self) -> None:
        pending = self._pending or []
        SLOW_CLOSES.inc()
        log.warning(
            "slow consumer disconnected",
            conn=self.id,
            queued=len(pending),
            queued_bytes=self._queued_bytes,
            oldest_seconds=round(self._clock() - pending[0][2], 3) if pending else 0.0,
        )
        self._pending = None
        self._queued_bytes = 0
        self.close_soon(CLOSE_TRY_LATER)

    def finish(self, frame: str, event: str, code: int) -> None:
        """Send one last event, then close with `code`."""
        self.push(frame, event)
        self._last_code = code

    def sign_in(self, identity: Identity, on_expiry: Expiry, wall: Callable[[], float]) -> None:
        """Hold the identity until its token expires, then call `on_expiry`; signing in again
        (a refreshed token) moves the deadline. One timer handle per signed-in socket."""
        self.identity = identity
        if self._deadline is not None:
            self._deadline.cancel()
        if self._close_code == _GONE:
            return  # the socket is gone already (a join that finished after it closed)
        delay = max(0.0, identity.exp - wall())
        self._deadline = asyncio.get_running_loop().call_later(delay, on_expiry, self)

    @property
    def is_closing(self) -> bool:
        return self._close_code is not None

    def close_soon(self, code: int) -> None:
        if self._close_code is None:
            self._close_code = code
            self._pending = None
            self._queued_bytes = 0
            if self._flusher is not None:
                self._flusher.cancel()
            reader = self._reader
            if reader is not None and reader is not asyncio.current_task():
                reader.cancel()  # serve() stops reading, then closes

    # lifecycle ------------------------------------------------------------------------------
    async def serve(self, receive: Receive, on_text: TextHandler, max_chars: int) -> None:
        """Read and handle the client's frames in the caller's task (the socket's own) until
        the client goes away or the server closes the socket."""
        task = asyncio.current_task()
        assert task is not None
        try:
            if self._close_code is None:
                self._reader = task
                try:
                    await self._read(receive, on_text, max_chars)
                except asyncio.CancelledError:
                    # close_soon() stops the reader by cancelling it; any other cancel is
                    # the server's, and goes on
                    if self._close_code is None or task.uncancel() > 0:
                        raise
                except Exception:
                    pass  # the client went away
                finally:
                    self._reader = None
        finally:
            code = self._close_code
            if code is None:
                self._close_code = _GONE
            if self._flusher is not None:
                self._flusher.cancel()
            self._pending = None
            if self._deadline is not None:
                self._deadline.cancel()
        if code:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_SECONDS):
                    await self._close(code)
                    # Read (and drop) what the client still sends until its close arrives:
                    # Hypercorn stops reading the socket while its queue to the app is full, and
                    # would then never see the client's close frame.
                    while True:
                        await receive()

    async def _read(self, receive: Receive, on_text: TextHandler, max_chars: int) -> None:
        while self._close_code is None:
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
            # a frame that only produced an error awaited nothing: let the loop run (and flush)
            await asyncio.sleep(0)
