"""The adapter to Hypercorn's WebSocket stream that pings every socket and closes dead peers
(protocol 2.2), with one pinger per server instead of a task per socket.

Hypercorn 0.18 pings from a task per socket (about 1.3 KB each while it sleeps) and ignores
the pongs: a peer whose network vanished (a half-open TCP connection) stays "connected", and its
user online, until the kernel gives up on the connection, which can take hours. Here Hypercorn
pings nothing itself (`websocket_ping_interval` stays None); one `Pinger` per server sweeps the
open streams on a timer, every quarter of the shorter of interval and timeout: it pings a
stream `interval` seconds after its last ping, and when the oldest ping not yet answered is
older than the timeout, it sends a close (1001 "ping timeout", best effort: a dead peer will not
read it) and ends the stream, so the application sees the socket go and the user leaves
presence as for any close. A stream is closed between `timeout` and `timeout` plus one sweep
after its unanswered ping.

The same deadline bounds the closing handshake of a socket the application closed (1009, 1012,
1013, ...): Hypercorn otherwise waits for the peer's close forever. Any pong counts as an answer
(RFC 6455 allows unsolicited ones).

Hypercorn is pinned in pyproject.toml because this subclasses its stream and replaces it in its
HTTP/1.1 and HTTP/2 protocols; tests/unit/test_pings.py says so loudly when its internals move.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Generator
from typing import Any

import structlog
from hypercorn.config import Config
from hypercorn.protocol import h2, h11, ws_stream
from hypercorn.protocol.events import Data, StreamClosed
from hypercorn.protocol.events import Event as StreamEvent
from wsproto.connection import Connection as WSConnection
from wsproto.events import CloseConnection, Event, Ping, Pong
from wsproto.utilities import LocalProtocolError

from .logthrottle import LogThrottle
from .metrics import PING_TIMEOUTS, PINGED_SOCKETS
from .rawsend import _writer_of

log = structlog.get_logger(__name__)

CLOSE_PING_TIMEOUT = 1001  # "going away": the peer is gone as far as the server can tell
_PINGER = "_roomcast_pinger"  # where `enable_pings` leaves the server's Pinger on its Config
_CLOSE_FRAME_WAIT = 1.0  # seconds to try to hand a dead peer its close frame
_SWEEPS_PER_PERIOD = 4  # sweeps per the shorter of interval and timeout

_LOG = LogThrottle()  # a network outage drops thousands of peers at once


class Pinger:
    """The one task of a server that pings its open WebSockets and closes the dead ones. It
    runs while some stream is open and ends with the last one (a server at rest holds no
    task); a sweep that fails is logged and the next one goes on."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.step = min(interval, timeout) / _SWEEPS_PER_PERIOD
        self._streams: dict[PingingWSStream, None] = {}  # in the order they opened
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # give-ups, and pings that must await

    def watch(self, stream: PingingWSStream) -> None:
        stream._next_ping = time.monotonic() + self.interval
        self._streams[stream] = None
        PINGED_SOCKETS.inc()
        self._start()

    def forget(self, stream: PingingWSStream) -> None:
        if self._streams.pop(stream, 0) is None:
            PINGED_SOCKETS.dec()
            task = self._task
            if not self._streams and task is not None and task is not asyncio.current_task():
                self._task = None
                task.cancel()  # the last socket is gone: no task left asleep

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._task.add_done_callback(self._ended)

    async def _run(self) -> None:
        while self._streams:
            await asyncio.sleep(self.step)
            try:
                self.sweep(time.monotonic())
            except Exception:
                log.exception("websocket ping sweep failed; the next one goes on")

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._task is task:
            self._task = None
        if task.cancelled():
            return  # the last socket went, or the server's loop is closing
        if task.exception() is not None:
            log.error("websocket pinger died; starting another", exc_info=task.exception())
        if self._streams:
            self._start()  # a socket opened while it was ending

    def sweep(self, now: float) -> None:
        """Close the streams whose oldest unanswered ping is past the timeout; ping those
        whose last ping is `interval` old."""
        timeout, interval = self.timeout, self.interval
        for stream in list(self._streams):
            if stream.closed:
                self.forget(stream)
                continue
            since = stream._unanswered_since
            if since is not None and now - since >= timeout:
                self.forget(stream)
                self._spawn(stream._give_up(now - since))
            elif now >= stream._next_ping:
                stream._next_ping = now + interval
                if since is None:
                    stream._unanswered_since = now
                stream._ping(self)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("websocket ping or close failed", exc_info=task.exception())


class PingingWSStream(ws_stream.WSStream):
    """Hypercorn's WebSocket stream, watched by its server's `Pinger` once accepted."""

    _unanswered_since: float | None = None  # when the oldest unanswered ping was sent
    _next_ping: float = 0.0

    async def handle(self, event: StreamEvent) -> None:
        await super().handle(event)
        if self.closed:
            pinger: Pinger | None = getattr(self.config, _PINGER, None)
            if pinger is not None:
                pinger.forget(self)

    async def _accept(self, message: Any) -> None:
        await super()._accept(message)
        self.connection.events = self._events  # type: ignore[method-assign]
        pinger: Pinger | None = getattr(self.config, _PINGER, None)
        if pinger is not None and not self.closed:
            pinger.watch(self)

    def _events(self) -> Generator[Event, None, None]:
        """wsproto's events, noting pongs (Hypercorn ignores them)."""
        for event in WSConnection.events(self.connection):
            if isinstance(event, Pong):
                self._unanswered_since = None
            yield event

    def _ping(self, pinger: Pinger) -> None:
        """Send a ping now: straight to the socket where Hypercorn's HTTP/1.1 writer is at
        hand (as rawsend does), else through Hypercorn's send in a task, bounded by the
        deadline. A stream that cannot take a ping (closing) keeps its deadline."""
        try:
            data = self.connection.send(Ping())
        except LocalProtocolError:
            return
        writer = _writer_of(self)
        if writer is not None:
            if not writer.transport.is_closing():
                writer.write(data)
            return
        pinger._spawn(self._send_slowly(data, pinger.timeout))

    async def _send_slowly(self, data: bytes, bound: float) -> None:
        # a send stuck behind a peer that reads nothing must not hold the deadline up
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bound):
                await self.send(Data(stream_id=self.stream_id, data=data))

    async def _give_up(self, waited: float) -> None:
        if self.closed:
            return
        PING_TIMEOUTS.inc()
        unanswered = "close" if self.state == ws_stream.ASGIWebsocketState.CLOSED else "ping"
        left_out = _LOG.allow(unanswered)
        if left_out is not None:
            log.info(
                "websocket peer did not answer; closing",
                unanswered=unanswered,
                waited=round(waited, 3),
                peer=f"{self.client[0]}:{self.client[1]}" if self.client else "unknown",
                **({"left_out": left_out} if left_out else {}),
            )
        close = CloseConnection(code=CLOSE_PING_TIMEOUT, reason="ping timeout")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_FRAME_WAIT):
                await self._send_wsproto_event(close)
        # as if the peer had closed: the app gets websocket.disconnect, the protocol drops the
        # connection
        await self.send(StreamClosed(stream_id=self.stream_id))


def enable_pings(config: Config, interval: float, timeout: float) -> None:
    """Ping every WebSocket `config` serves each `interval` seconds and close it when a ping
    stays unanswered for `timeout` seconds, from one `Pinger` (Hypercorn's own pings off)."""
    config.websocket_ping_interval = None
    setattr(config, _PINGER, Pinger(interval, timeout))
    h11.WSStream = PingingWSStream  # type: ignore[attr-defined]
    h2.WSStream = PingingWSStream  # type: ignore[attr-defined]
