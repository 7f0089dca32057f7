"""A minimal RFC 6455 WebSocket client on an asyncio `Protocol`, for the load generator.

A general-purpose client (the `websockets` package) spends tens of microseconds per received
frame; this one parses frames straight out of `data_received` and hands each text message to a
callback with one clock reading per read, so thousands of sockets in one process cost little.
It does what the bench needs and no more: text frames out (masked, never compressed), text
frames in (fragmented or not), ping/pong, close, and permessage-deflate *received* when the
server accepts the client's offer (a browser always offers it; whether it is accepted is the
server's setting, and that is what the bench compares).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import struct
import time
import zlib
from collections.abc import Callable

_c_apply_mask: Callable[[bytes, bytes], bytes] | None
try:  # websockets ships a C helper for masking
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - pure-Python fallback
    _c_apply_mask = None

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_DEFLATE_TAIL = b"\x00\x00\xff\xff"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10

TextHandler = Callable[[str, int], None]  # (text, monotonic_ns when read)


def apply_mask(data: bytes, mask: bytes) -> bytes:
    if _c_apply_mask is not None:
        return bytes(_c_apply_mask(data, mask))
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def _frame(opcode: int, payload: bytes) -> bytes:
    mask = random.randbytes(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + mask + apply_mask(payload, mask)


class HandshakeError(Exception):
    pass


class WSClient(asyncio.Protocol):
    """One WebSocket. `opened` resolves after the 101 response; `closed` when the TCP
    connection ends (with the close code the server sent, or None)."""

    def __init__(
        self, host: str, port: int, path: str, on_text: TextHandler, *, offer_deflate: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        self.host, self.port, self.path = host, port, path
        self.on_text = on_text
        self.offer_deflate = offer_deflate
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self.deflate = False
        self.close_code: int | None = None
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._upgraded = False
        self._key = base64.b64encode(os.urandom(16))
        self._fragments: list[bytes] = []
        self._fragment_compressed = False
        self._fragment_text = False
        self._inflate: zlib._Decompress | None = None
        self._reset_inflate = False

    # asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport instances, but behave as such
        self._transport = transport  # type: ignore[assignment]
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key.decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.offer_deflate:
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        self._transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if not self._upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).decode("latin-1")
            del buffer[: end + 4]
            try:
                self._check_handshake(head)
            except HandshakeError as exc:
                if not self.opened.done():
                    self.opened.set_exception(exc)
                self.abort()
                return
            self._upgraded = True
            if not self.opened.done():
                self.opened.set_result(None)
            if not buffer:
                return
        self._parse(time.monotonic_ns())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("connection closed in handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    # frames -----------------------------------------------------------------------------------
    def _check_handshake(self, head: str) -> None:
        status, _, rest = head.partition("\r\n")
        if not status.startswith("HTTP/1.1 101"):
            raise HandshakeError(status.strip() or "no HTTP response")
        headers: dict[str, str] = {}
        for line in rest.split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise HandshakeError("bad Sec-WebSocket-Accept")
        extensions = headers.get("sec-websocket-extensions", "")
        if "permessage-deflate" in extensions:
            if not self.offer_deflate:
                raise HandshakeError("server chose an extension the client did not offer")
            self.deflate = True
            self._reset_inflate = "server_no_context_takeover" in extensions
            self._inflate = zlib.decompressobj(-15)

    def _parse(self, now: int) -> None:
        buffer = self._buffer
        size = len(buffer)
        pos = 0
        while size - pos >= 2:
            b0 = buffer[pos]
            length = buffer[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buffer[pos + 2] << 8) | buffer[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                head = 10
            if buffer[pos + 1] & 0x80:  # a masked server frame: protocol error
                self.abort()
                return
            end = pos + head + length
            if end > size:
                break
            payload = bytes(buffer[pos + head : end])
            pos = end
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode in (_OP_TEXT, _OP_BINARY):
                if fin and not self._fragments:
                    if b0 & 0x40:
                        payload = self._decompress(payload)
                    if opcode == _OP_TEXT:
                        self.on_text(payload.decode(), now)
                else:
                    self._fragments = [payload]
                    self._fragment_compressed = bool(b0 & 0x40)
                    self._fragment_text = opcode == _OP_TEXT
            elif opcode == _OP_CONT:
                self._fragments.append(payload)
                if fin:
                    whole = b"".join(self._fragments)
                    self._fragments = []
                    if self._fragment_compressed:
                        whole = self._decompress(whole)
                    if self._fragment_text:
                        self.on_text(whole.decode(), now)
            elif opcode == _OP_PING:
                self._write(_frame(_OP_PONG, payload))
            elif opcode == _OP_CLOSE:
                if len(payload) >= 2:
                    self.close_code = (payload[0] << 8) | payload[1]
                else:
                    self.close_code = 1005
                self._write(_frame(_OP_CLOSE, payload[:2]))
                if self._transport is not None:
                    self._transport.close()
                break
        if pos:
            del buffer[:pos]

    def _decompress(self, payload: bytes) -> bytes:
        if self._inflate is None:
            raise HandshakeError("compressed frame without permessage-deflate")
        data = self._inflate.decompress(payload + _DEFLATE_TAIL)
        if self._reset_inflate:
            self._inflate = zlib.decompressobj(-15)
        return data

    # sending ----------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def send_text(self, text: str) -> bool:
        """Queue a text frame; False when the socket is closing or gone."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        transport.write(_frame(_OP_TEXT, text.encode()))
        return True

    @property
    def is_open(self) -> bool:
        transport = self._transport
        return self._upgraded and transport is not None and not transport.is_closing()

    def close(self, code: int = 1000) -> None:
        """Send a close frame and end the TCP connection (no wait for the server's answer)."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(_frame(_OP_CLOSE, struct.pack("!H", code)))
            transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


async def connect(
    url: str,
    on_text: TextHandler,
    *,
    offer_deflate: bool = False,
    timeout: float = 30.0,
    bind: Callable[[WSClient], None] | None = None,
) -> WSClient:
    """Open `ws://host:port/path` and return the protocol once upgraded.

    `bind` gets the protocol before any frame is read: a server may send its first frame in
    the same read as the handshake's answer, and the handler may want to reply at once."""
    if not url.startswith("ws://"):
        raise ValueError(f"only ws:// URLs: {url!r}")
    rest = url[len("ws://") :]
    hostport, slash, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):

        def factory() -> WSClient:
            protocol = WSClient(host, int(port), slash + path, on_text, offer_deflate=offer_deflate)
            if bind is not None:
                bind(protocol)
            return protocol

        _, protocol = await loop.create_connection(factory, host, int(port))
        try:
            await protocol.opened
        except BaseException:
            protocol.abort()
            raise
    return protocol
