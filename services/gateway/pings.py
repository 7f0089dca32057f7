"""The adapter to Hypercorn's WebSocket stream that closes dead peers (protocol 2.2).

Hypercorn 0.18 sends a ping every `websocket_ping_interval` seconds but ignores the pongs: a
peer whose network vanished (a half-open TCP connection) stays "connected", and its user online,
until the kernel gives up on the connection, which can take hours. This stream tracks the
oldest ping not yet answered, and when it is older than the timeout, sends a close (1001 "ping
timeout", best effort: a dead peer will not read it), and ends the stream, so the application
sees the socket go and the user leaves presence as for any close.

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
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import StreamClosed
from wsproto.events import CloseConnection, Event, Ping, Pong

from .logthrottle import LogThrottle
from .metrics import PING_TIMEOUTS

log = structlog.get_logger(__name__)

CLOSE_PING_TIMEOUT = 1001  # "going away": the peer is gone as far as the server can tell
_TIMEOUT = "_roomcast_ping_timeout"  # where `enable_pings` leaves the timeout on the Config
_CLOSE_FRAME_WAIT = 1.0  # seconds to try to hand a dead peer its close frame

_LOG = LogThrottle()  # a network outage drops thousands of peers at once


class PingingWSStream(ws_stream.WSStream):
    """Hypercorn's WebSocket stream, plus a deadline on every ping (and on the close)."""

    _unanswered_since: float | None = None  # when the oldest unanswered ping was sent
    _pinger: asyncio.Task[Any] | None = None

    async def handle(self, event: StreamEvent) -> None:
        await super().handle(event)
        # Stop pinging at once when the stream ends: the connection's task group waits for
        # every task, so a pinger asleep for an interval would hold a closed socket that long.
        pinger = self._pinger
        if self.closed and pinger is not None and pinger is not asyncio.current_task():
            self._pinger = None
            pinger.cancel()

    async def _accept(self, message: Any) -> None:
        await super()._accept(message)
        events = self.connection.events

        def watched() -> Generator[Event, None, None]:
            for event in events():
                if isinstance(event, Pong):
                    self._unanswered_since = None
                yield event

        self.connection.events = watched  # type: ignore[method-assign]

    async def _send_pings(self) -> None:
        self._pinger = asyncio.current_task()
        timeout: float | None = getattr(self.config, _TIMEOUT, None)
        interval = self.config.websocket_ping_interval
        if timeout is None or interval is None:
            await super()._send_pings()
            return
        next_ping = time.monotonic()
        while not self.closed:
            now = time.monotonic()
            since = self._unanswered_since
            if since is not None and now - since >= timeout:
                await self._give_up(now - since)
                return
            if now >= next_ping:
                next_ping = now + interval
                if since is None:
                    self._unanswered_since = since = now
                # a send stuck behind a peer that reads nothing must not hold the deadline up
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(since + timeout - now):
                        await self._send_wsproto_event(Ping())
                continue
            wake = next_ping if since is None else min(next_ping, since + timeout)
            await self.context.sleep(wake - now)

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
    stays unanswered for `timeout` seconds."""
    config.websocket_ping_interval = interval
    setattr(config, _TIMEOUT, timeout)
    h11.WSStream = PingingWSStream  # type: ignore[attr-defined]
    h2.WSStream = PingingWSStream  # type: ignore[attr-defined]
