"""A history service running on its own in-memory bus, for unit tests of what history does."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from roomcast.history.service import HistoryService
from roomcast.shared.bus import InMemoryBus
from roomcast.shared.config import load_settings
from roomcast.shared.store.base import MessageStore


@contextlib.asynccontextmanager
async def running_history(
    name: str, store: MessageStore, **options: Any
) -> AsyncIterator[tuple[InMemoryBus, HistoryService]]:
    """`options` go to `HistoryService` (e.g. `write_linger`); stopped and closed on exit."""
    bus = InMemoryBus(name=name)
    await bus.connect()
    service = HistoryService(
        bus, store, load_settings(secret="test-secret-0123456789abcdef"), **options
    )
    await service.start()
    try:
        yield bus, service
    finally:
        await service.stop()
        await bus.close()
