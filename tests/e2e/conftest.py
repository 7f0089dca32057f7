"""`roomcast dev` as a real process: started with `python -m roomcast dev --port P --data-dir D`,
ready once `/readyz` answers 200, stopped with SIGINT like Ctrl-C in a terminal.

Each process gets a session (process group) of its own, so a test can signal the whole group as a
terminal does on Ctrl-C, and can check afterwards that nothing of the group (the SecantusDB child
above all) is still running, without psutil: `/proc` is read directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.support.chat_client import ChatClient
from tests.support.dev_process import DevProcess
from tests.support.ports import free_port

StartDev = Callable[..., Awaitable[DevProcess]]


@pytest.fixture
async def start_dev(tmp_path: Path) -> AsyncIterator[StartDev]:
    """Start `roomcast dev` processes (ready when returned); any left running are killed."""
    started: list[DevProcess] = []

    async def start(data_dir: Path | None = None) -> DevProcess:
        data_dir = data_dir or tmp_path / "data"
        dev = DevProcess(data_dir, free_port(), tmp_path / f"dev-{len(started)}.log")
        started.append(dev)
        dev.start()
        await asyncio.to_thread(dev.wait_ready)
        return dev

    yield start
    for dev in started:
        dev.kill()


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    """One `roomcast dev` shared by the tests of a module (each uses rooms and names of its own)."""
    base = tmp_path_factory.mktemp("dev-shared")
    dev = DevProcess(base / "data", free_port(), base / "dev.log")
    dev.start()
    try:
        dev.wait_ready()
        yield dev
        if dev.process is not None and dev.process.poll() is None:
            dev.interrupt(group=True)
            dev.wait()
    finally:
        dev.kill()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[DevProcess], Awaitable[ChatClient]]]:
    """Open protocol clients on a dev process; all are closed at the end of the test."""
    clients: list[ChatClient] = []

    async def open_client(dev: DevProcess) -> ChatClient:
        client = await ChatClient.connect(dev.ws)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        with contextlib.suppress(Exception):  # some were closed by a server that stopped
            await client.close()
