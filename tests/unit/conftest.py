from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.support.chat_client import ChatClient
from tests.support.inprocess import Server, running

pytestmark = pytest.mark.unit


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    """The services in this process; `@pytest.mark.settings(name=value)` overrides settings."""
    marker = request.node.get_closest_marker("settings")
    async with running(**(marker.kwargs if marker else {})) as srv:
        yield srv


@pytest.fixture
async def connect(server: Server) -> AsyncIterator[Callable[..., Awaitable[ChatClient]]]:
    """Open clients on the server; all are closed at the end of the test."""
    clients: list[ChatClient] = []

    async def open_client(**kwargs: object) -> ChatClient:
        client = await ChatClient.connect(server.url, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()
