"""What an idle joined socket holds in the gateway (issue 11: memory per socket). Counted, not
measured: the server's tasks per socket and the per-socket structures that exist only while
something waits to be written, so the test cannot be flaky on a loaded machine."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from tests.support.chat_client import ChatClient

SOCKETS = 8
# Hypercorn's own per connection: its TCPServer task and the ASGI app task (which also reads the
# client's frames: `Connection.serve`). None of ours: one pinger serves every socket (pings.py).
TASKS_PER_SOCKET = 2


def _says(body: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["event"] == "updateChat" and f["data"].get("body") == body


def _server_tasks() -> list[asyncio.Task[object]]:
    """Tasks of the server (not of the test's own clients)."""
    out = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if f"{os.sep}websockets{os.sep}" in filename or f"{os.sep}tests{os.sep}" in filename:
            continue
        out.append(task)
    return out


async def test_an_idle_joined_socket_runs_no_task_of_the_gateways_own(connect, server):
    warm = await connect(batch=True)
    await warm.join("warm", "r0")
    await warm.say("r0", "hello")
    await asyncio.sleep(0.1)
    before = len(_server_tasks())
    clients: list[ChatClient] = []
    for i in range(SOCKETS):
        client = await connect(batch=i % 2 == 0)
        await client.join(f"idle{i}", f"r{i % 3}")
        clients.append(client)
    await warm.say("r0", "to everyone in r0")
    for client in clients[::3]:
        await client.wait_for(_says("to everyone in r0"))
    await asyncio.sleep(0.1)
    added = len(_server_tasks()) - before
    assert added == SOCKETS * TASKS_PER_SOCKET, sorted(
        t.get_coro().__qualname__ for t in _server_tasks()
    )


async def test_an_idle_connection_holds_no_queue_and_no_writer(connect, server):
    client = await connect(batch=True)
    await client.join("quiet", "main")
    other = await connect()
    await other.join("talker", "main")
    await other.say("main", "written and gone")
    await client.wait_for(_says("written and gone"))
    conns = list(server.system.gateway.membership.connections)
    assert len(conns) == 2
    for conn in conns:
        assert conn._pending is None and conn._flusher is None and conn._reader is not None
        assert not hasattr(conn, "__dict__")
