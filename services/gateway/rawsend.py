"""The adapter that writes a text frame straight to a Hypercorn connection's socket.

Hypercorn sends each ASGI `websocket.send` through five layers (the stream, wsproto's framing,
the HTTP/1.1 protocol, an `asyncio.Lock` and `drain()`): about a third of a fan-out gateway's
CPU went there (docs/performance.md, "Hot path, 2026-12-03"). Without an extension (compression
is declined by default, `compression.py`) a server's text frame is only a header and the UTF-8
payload, so this module frames it itself and writes it to the connection's `StreamWriter`,
without awaiting: the socket's `Connection` flushes once per loop iteration and waits for
`drain()` only while the transport's buffer is above its high-water mark (its own send queue
keeps its bounds meanwhile). The payload arrives as bytes already: the relay
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


class Sink:
    """Where a socket's frames go: `write` puts frames on the wire now, without awaiting (False
    when this socket cannot be written directly: then `send` each one); `blocked` says the
    transport holds more than its high-water mark, and `drain` waits until it does not."""

    __slots__ = ("send",)

    def __init__(self, send: SendText) -> None:
        self.send = send

    def write(self, payloads: list[bytes], batch: bool) -> bool:
        return False

    def blocked(self) -> bool:
        return False

    async def drain(self) -> None:
        return None


class DirectSink(Sink):
    """A plain HTTP/1.1 WebSocket of Hypercorn's: frames go straight to its `StreamWriter`."""

    __slots__ = ("_stream", "_transport", "_writer")

    def __init__(self, send: SendText, stream: WSStream, writer: StreamWriter) -> None:
        super().__init__(send)
        self._stream = stream
        self._writer = writer
        self._transport = writer.transport

    def write(self, payloads: list[bytes], batch: bool) -> bool:
        """Frame `payloads` (one frame each, or joined by newlines into frames of at most
        `MAX_BATCH_BYTES` with `batch`) and write them in one call, so one `send()` carries
        them all."""
        stream = self._stream
        if (
            stream.closed
            or stream.state is not ASGIWebsocketState.CONNECTED
            or stream.connection.state is not ConnectionState.OPEN
            or self._transport.is_closing()
        ):
            return False  # Hypercorn decides what a closing socket does with them
        frame = text_frame
        if len(payloads) == 1:
            self._writer.write(frame(payloads[0]))
        elif batch:
            self._writer.write(b"".join(frame(chunk) for chunk in batches(payloads)))
        else:
            self._writer.write(b"".join(frame(payload) for payload in payloads))
        return True

    def blocked(self) -> bool:
        return self._transport.get_write_buffer_size() > _HIGH_WATER

    async def drain(self) -> None:
        # a dropped connection is Hypercorn's reader's to notice (the app then gets its
        # disconnect); what was written is not sent again
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._writer.drain()


MAX_BATCH_BYTES = 256 * 1024


def batches(payloads: list[bytes]) -> list[bytes]:
    """`payloads` joined by newlines into texts of about `MAX_BATCH_BYTES` at most (a longer
    payload is a text of its own), in order."""
    out: list[bytes] = []
    start, size = 0, 0
    for i, payload in enumerate(payloads):
        if size and size + len(payload) > MAX_BATCH_BYTES:
            out.append(b"\n".join(payloads[start:i]))
            start, size = i, 0
        size += len(payload) + 1
    out.append(b"\n".join(payloads[start:]))
    return out


def direct_sender(asgi_send: Callable[[Any], Awaitable[None]]) -> Sink:
    """A sink for one accepted socket: straight to its writer where it can be, else the ASGI
    message."""

    async def via_asgi(text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode()
        await asgi_send({"type": "websocket.send", "text": text})

    stream = getattr(asgi_send, "__self__", None)
    if not isinstance(stream, WSStream):
        return Sink(via_asgi)
    writer = _writer_of(stream)
    if writer is None or getattr(stream.handshake, "extensions", None):
        return Sink(via_asgi)
    return DirectSink(via_asgi, stream, writer)
