"""The adapter that writes a text frame straight to a Hypercorn connection's socket.

Hypercorn sends each ASGI `websocket.send` through five layers (the stream, wsproto's framing,
the HTTP/1.1 protocol, an `asyncio.Lock` and `drain()`): about a third of a fan-out gateway's
CPU went there (docs/performance.md, "Hot path, 2026-12-03"). Without an extension (compression
is declined by default, `compression.py`) a server's text frame is only a header and the UTF-8
payload, so this module frames it itself and writes it to the connection's `StreamWriter`,
waiting for `drain()` only when the transport's buffer is above its high-water mark (the
socket's own send queue keeps its bounds). The payload arrives as bytes already: the relay
hands every socket of a room the same bytes it got from the broker, never re-encoded.

Anything unusual (another server, HTTP/2, an extension negotiated, a stream that is closing)
goes through the plain ASGI message, so this never changes what is sent, only how. Hypercorn is
pinned in pyproject.toml because this reads its internals; tests/unit/test_rawsend.py checks the
path is taken and that its frames are what wsproto would send.
"""

from __future__ import annotations

import contextlib
import struct
from asyncio import StreamWriter
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from wsproto.connection import ConnectionState

SendText = Callable[[str | bytes], Awaitable[None]]
_HIGH_WATER = 64 * 1024  # bytes waiting in the transport before a write waits for drain()


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame (RFC 6455 5.2) holding `payload` (UTF-8)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def _writer_of(stream: WSStream) -> StreamWriter | None:
    """The TCP writer under a WebSocket served over HTTP/1.1 by Hypercorn's asyncio worker."""
    protocol = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None
    server = getattr(protocol.send, "__self__", None)
    writer = getattr(server, "writer", None)
    return writer if isinstance(writer, StreamWriter) else None


def direct_sender(asgi_send: Callable[[Any], Awaitable[None]]) -> SendText:
    """A text sender for one accepted socket: straight to its writer where it can be, else the
    ASGI message."""

    async def via_asgi(text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode()
        await asgi_send({"type": "websocket.send", "text": text})

    stream = getattr(asgi_send, "__self__", None)
    if not isinstance(stream, WSStream):
        return via_asgi
    writer = _writer_of(stream)
    if writer is None or getattr(stream.handshake, "extensions", None):
        return via_asgi
    transport = writer.transport
    connected = ASGIWebsocketState.CONNECTED
    is_open = ConnectionState.OPEN

    async def direct(text: str | bytes) -> None:
        if (
            stream.closed
            or stream.state is not connected
            or stream.connection.state is not is_open
            or transport.is_closing()
        ):
            await via_asgi(text)  # Hypercorn decides what a closing socket does with it
            return
        writer.write(text_frame(text if isinstance(text, bytes) else text.encode()))
        if transport.get_write_buffer_size() > _HIGH_WATER:
            # a dropped connection is Hypercorn's reader's to notice (the app then gets its
            # disconnect); the frame is written already, so it is not sent again
            with contextlib.suppress(ConnectionError, RuntimeError):
                await writer.drain()

    return direct
