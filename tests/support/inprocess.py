"""roomcast's services in the test's own process, on the in-memory bus and stores, served by a
real Hypercorn on a free port so tests drive them with real WebSocket clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from hypercorn.asyncio import serve

from roomcast.gateway.compression import set_websocket_compression
from roomcast.runtime import Embedded, _hypercorn, embedded
from roomcast.shared.config import Settings, load_settings
from roomcast.shared.sessions import SessionSigner
from roomcast.shared.store.memory import InMemoryMessageStore, InMemoryRoomStore

from .ports import free_port

TEST_SECRET = "test-secret-0123456789abcdef"


@dataclass
class Server:
    url: str
    http: str
    system: Embedded
    messages: InMemoryMessageStore
    rooms: InMemoryRoomStore
    settings: Settings


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[Server]:
    settings = load_settings(secret=TEST_SECRET, **overrides)
    set_websocket_compression(settings.websocket_compression)
    messages, rooms = InMemoryMessageStore(), InMemoryRoomStore()
    signer = SessionSigner(TEST_SECRET.encode())
    async with embedded(settings, signer, messages, rooms) as system:
        port = free_port()
        stop = asyncio.Event()
        task = asyncio.create_task(
            serve(system.app, _hypercorn("127.0.0.1", port, settings), shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        )
        try:
            await _until_listening(port)
            yield Server(
                f"ws://127.0.0.1:{port}",
                f"http://127.0.0.1:{port}",
                system,
                messages,
                rooms,
                settings,
            )
        finally:
            await system.gateway.drain()
            stop.set()
            await asyncio.wait_for(task, 10)


async def _until_listening(port: int) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return
