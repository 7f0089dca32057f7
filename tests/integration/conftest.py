"""Fixtures for the integration tests: real SecantusDB servers on 127.0.0.1.

- `secantus_server`: one server for the whole session, its data in a temporary dir.
- `mongo_url` / `mongo_db`: its URL, and a database name of the test's own, so tests sharing
  the server never see each other's data.
- `own_secantus`: a server of the test's own (for tests that stop or restart it).
"""

from __future__ import annotations

import contextlib
import gc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from roomcast.shared.secantus import SecantusServer
from tests.servers.rabbitmq import machine_broker_url
from tests.support.chat_client import ChatClient
from tests.support.cluster import Cluster

# pymongo 4.20 leaks a socket when an AsyncMongoClient is closed while one of its monitors is
# connecting (it closes the socket on OSError/TimeoutError, not on cancellation: PYTHON-5867,
# mongo-python-driver PR 2858). That happens when a test closes a store while the server is down
# or restarting, and the socket's ResourceWarning comes from the garbage collector. Ignore exactly
# that: an unclosed socket that never got connected (no `raddr`) on 127.0.0.1; a connected socket
# left open still fails the test. The filter goes on this folder's tests only, and each of them
# collects its garbage at its end (`_collect_garbage`), while its own filters still apply.
_HALF_OPEN_SOCKET = (
    r"unclosed <socket\.socket fd=\d+, family=[^,]+, type=[^,]+, proto=\d+,"
    r" laddr=\('127\.0\.0\.1', \d+\)>$"
)


_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark = pytest.mark.filterwarnings(f"ignore:{_HALF_OPEN_SOCKET}:ResourceWarning")
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(mark)


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect each test's garbage while its warning filters apply (see `_HALF_OPEN_SOCKET`)."""
    yield
    gc.collect()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def secantus_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[SecantusServer]:
    """A SecantusDB server shared by the session's tests (never stop it in a test)."""
    async with SecantusServer(tmp_path_factory.mktemp("secantus")) as server:
        yield server


@pytest.fixture
def mongo_url(secantus_server: SecantusServer) -> str:
    """`mongodb://127.0.0.1:PORT` of the session's SecantusDB server."""
    return str(secantus_server.url)


@pytest.fixture
def mongo_db() -> str:
    """A database name no other test uses."""
    return f"test_{uuid.uuid4().hex[:16]}"


@pytest_asyncio.fixture
async def own_secantus(tmp_path: Path) -> AsyncIterator[SecantusServer]:
    """A started SecantusDB server of this test's own, with its data in `tmp_path/secantus`;
    stopped after the test (whatever state the test left it in)."""
    server = SecantusServer(tmp_path / "secantus")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def cluster(tmp_path: Path, secantus_server: SecantusServer) -> AsyncIterator[Cluster]:
    """Services started as processes on the machine's RabbitMQ with an exchange and database
    of the test's own, heartbeats every second; everything stopped and deleted after."""
    c = Cluster(tmp_path, machine_broker_url(), secantus_server.url, heartbeat_interval="1")
    try:
        yield c
    finally:
        await c.close()


@pytest_asyncio.fixture
async def connect() -> AsyncIterator[Callable[[str], Awaitable[ChatClient]]]:
    """Open WebSocket clients to a gateway URL; all are closed after the test."""
    opened: list[ChatClient] = []

    async def open_client(url: str) -> ChatClient:
        client = await ChatClient.connect(url)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        with contextlib.suppress(Exception):
            await client.close()
