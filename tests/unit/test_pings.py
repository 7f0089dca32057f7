"""Dead peers (PROTOCOL.md 2.2): the server pings every socket and closes one whose peer leaves a
ping unanswered past `ROOMCAST_PING_TIMEOUT`; its user then leaves presence as for any close.

The dead peer is a WebSocket client written by hand on a TCP socket, which answers pings only
while the test says so (the `websockets` client answers them by itself). Hypercorn's internals
that roomcast.gateway.pings adapts are checked first, so an upgrade fails here, loudly.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from urllib.parse import urlsplit

import httpx
import pytest
import structlog
from hypercorn.protocol import h2, h11, ws_stream
from prometheus_client import REGISTRY

from roomcast.gateway.pings import CLOSE_PING_TIMEOUT, Pinger, PingingWSStream
from roomcast.runtime import _hypercorn
from roomcast.shared.config import load_settings
from tests.support.chat_client import ChatClient

pytestmark = pytest.mark.unit

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
FAST = {"ping_interval": 0.2, "ping_timeout": 1.0}


class RawPeer:
    """A WebSocket client on a bare TCP stream: frames in and out by hand, pongs on demand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, url: str) -> RawPeer:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.split()[1] == b"101", head
        return cls(reader, writer)

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            size = bytes([0x80 | n])
        elif n < 65536:
            size = bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            size = bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x80 | opcode]) + size + mask + masked)

    async def frame(self) -> tuple[int, bytes]:
        """The next frame from the server (unmasked, unfragmented); (-1, b"") at the end."""
        try:
            first, second = await self.reader.readexactly(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            return first & 0x0F, await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return -1, b""

    async def join(self, username: str) -> None:
        """Join `main`, answering pings meanwhile."""
        frame = {"event": "userJoin", "data": {"username": username, "room": "main"}, "ref": "j"}
        self.send(TEXT, json.dumps(frame).encode())
        while True:
            opcode, payload = await self.frame()
            assert opcode not in (CLOSE, -1), "closed while joining"
            if opcode == PING:
                self.send(PONG, payload)
            elif opcode == TEXT and json.loads(payload).get("ref") == "j":
                assert json.loads(payload)["event"] == "ack", payload
                return

    def close(self) -> None:
        self.writer.close()


@asynccontextmanager
async def raw_peer(url: str) -> AsyncIterator[RawPeer]:
    peer = await RawPeer.connect(url)
    try:
        yield peer
    finally:
        peer.close()


def timeouts() -> float:
    return REGISTRY.get_sample_value("roomcast_gateway_ping_timeouts_total") or 0.0


async def users(server: object) -> list[str]:
    async with httpx.AsyncClient(base_url=server.http) as http:  # type: ignore[attr-defined]
        response = await http.get("/api/rooms/main/users")
    assert response.status_code == 200
    return sorted(response.json()["users"])


def test_hypercorn_keeps_what_the_ping_adapter_relies_on() -> None:
    """roomcast.gateway.pings subclasses Hypercorn's WebSocket stream: if any of this changed,
    re-read hypercorn/protocol/ws_stream.py and adapt pings.py (or drop it, if Hypercorn now
    enforces a pong timeout of its own)."""
    assert version("hypercorn") == "0.18.0", "pinned in pyproject.toml: re-check pings.py"
    source = inspect.getsource(ws_stream)
    assert "Pong" not in source, "Hypercorn now handles pongs: does it time them out itself?"
    assert "self.connection.events()" in inspect.getsource(ws_stream.WSStream._handle_events)
    accept = inspect.getsource(ws_stream.WSStream._accept)
    assert "self.connection" in accept
    # Hypercorn's own pinger (a task per socket) is off while its interval is None
    assert "if self.config.websocket_ping_interval is not None:" in accept
    handle = inspect.getsource(ws_stream.WSStream.handle)
    assert "StreamClosed" in handle and '"websocket.disconnect"' in handle
    for name in ("_send_wsproto_event", "state", "client", "closed", "stream_id", "config"):
        assert name in inspect.getsource(ws_stream.WSStream), name
    # the protocols build their streams from a module-level name that enable_pings replaces,
    # and every server roomcast runs is configured through _hypercorn
    config = _hypercorn("127.0.0.1", 8000, load_settings(ping_interval=7, ping_timeout=9))
    assert config.websocket_ping_interval is None
    pinger = vars(config)["_roomcast_pinger"]
    assert isinstance(pinger, Pinger) and (pinger.interval, pinger.timeout) == (7, 9)
    assert "self.stream = WSStream(" in inspect.getsource(h11.H11Protocol._create_stream)
    assert "WSStream(" in inspect.getsource(h2.H2Protocol)
    assert h11.WSStream is PingingWSStream and h2.WSStream is PingingWSStream  # type: ignore[attr-defined]


@pytest.mark.settings(**FAST)
async def test_a_peer_that_stops_answering_pings_is_closed_and_leaves_presence(connect, server):
    alice: ChatClient = await connect()
    await alice.join("alice")
    async with raw_peer(server.url) as ghost:
        await ghost.join("ghost")
        await alice.wait_for(
            lambda f: f["event"] == "userJoin" and f["data"]["username"] == "ghost"
        )
        answered = 0
        while answered < 3:  # a peer that answers stays
            opcode, payload = await asyncio.wait_for(ghost.frame(), 10)
            assert opcode not in (CLOSE, -1), "closed although it answered every ping"
            if opcode == PING:
                ghost.send(PONG, payload)
                answered += 1
        assert await users(server) == ["alice", "ghost"]

        before = timeouts()
        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(10):  # the ghost now reads on but never answers
                opcode, payload = await ghost.frame()
                while opcode not in (CLOSE, -1):
                    opcode, payload = await ghost.frame()
                assert opcode == CLOSE, "dropped without a close frame"
                assert struct.unpack("!H", payload[:2])[0] == CLOSE_PING_TIMEOUT == 1001
                assert payload[2:] == b"ping timeout"
                assert await ghost.frame() == (-1, b""), "the connection stays open"
            left = await alice.wait_for(
                lambda f: f["event"] == "userLeave" and f["data"]["username"] == "ghost"
            )
        assert left["room"] == "main"
        assert await users(server) == ["alice"]
        assert timeouts() == before + 1
        lines = [e for e in logs if e["event"] == "websocket peer did not answer; closing"]
        assert len(lines) == 1 and lines[0]["unanswered"] == "ping"
        assert lines[0]["waited"] >= 1.0 and lines[0]["peer"].startswith("127.0.0.1:")
        assert lines[0]["log_level"] == "info"
    # alice's client answers pings by itself: she is still here, and still chatting
    assert not alice.closed.done()
    await alice.say("main", "still here")


@pytest.mark.settings(**FAST)
async def test_a_close_the_peer_never_answers_does_not_hold_the_connection(server):
    """The server closes a socket (1009, a frame over the limit) and the peer never answers the
    close: the same deadline ends the connection, which Hypercorn alone would keep forever."""
    async with raw_peer(server.url) as peer:
        await peer.join("mute")
        before = timeouts()
        with structlog.testing.capture_logs() as logs:
            peer.send(TEXT, b"x" * (server.settings.max_frame_bytes + 1))
            async with asyncio.timeout(10):
                codes = []
                opcode, payload = await peer.frame()
                while opcode != -1:  # pings and the close are read, never answered
                    if opcode == CLOSE:
                        codes.append(struct.unpack("!H", payload[:2])[0])
                    opcode, payload = await peer.frame()
        assert codes[0] == 1009
        assert timeouts() == before + 1
        lines = [e for e in logs if e["event"] == "websocket peer did not answer; closing"]
        assert [e["unanswered"] for e in lines] == ["close"]
    assert await users(server) == []


def pinger_tasks() -> list[str]:
    """The server's ping tasks: the one pinger's, and any of Hypercorn's own per socket."""
    names = ("Pinger._run", "WSStream._send_pings", "PingingWSStream._send_pings")
    return [
        name
        for task in asyncio.all_tasks()
        if (name := getattr(task.get_coro(), "__qualname__", "")) in names
    ]


def pinged() -> float:
    return REGISTRY.get_sample_value("roomcast_gateway_pinged_sockets") or 0.0


@pytest.mark.settings(**FAST)
async def test_one_pinger_serves_every_socket_and_ends_with_the_last(connect, server) -> None:
    """No task per socket: one pinger for the server while any socket is open, none after.
    Each socket is still pinged, interval after interval."""
    before = pinged()
    clients: list[ChatClient] = [await connect() for _ in range(5)]
    await clients[0].join("alice")
    assert pinger_tasks() == ["Pinger._run"]
    assert pinged() == before + 5
    raw = await RawPeer.connect(server.url)
    try:
        async with asyncio.timeout(10):
            for _ in range(3):  # pinged again and again, and answering keeps it open
                opcode, payload = await raw.frame()
                assert opcode == PING, opcode
                raw.send(PONG, payload)
    finally:
        raw.close()
    for client in clients:
        await client.close()
    async with asyncio.timeout(10):
        while pinger_tasks():  # noqa: ASYNC110 - tasks ending: no event to wait on
            await asyncio.sleep(0.02)
    assert pinged() == before
