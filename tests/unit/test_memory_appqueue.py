"""The queue between Hypercorn and each socket's ASGI task (roomcast.gateway.appqueue): it keeps
`asyncio.Queue`'s contract at a fraction of its memory, and Hypercorn still builds its
connections the way `install` relies on (an upgrade fails here, loudly)."""

from __future__ import annotations

import asyncio
import inspect
import tracemalloc
from importlib.metadata import version

import pytest
from hypercorn.asyncio import task_group, tcp_server

from roomcast.gateway import appqueue
from roomcast.gateway.appqueue import AppQueue
from roomcast.runtime import _hypercorn
from roomcast.shared.config import load_settings
from tests.support import heap
from tests.support.chat_client import ChatClient

pytestmark = pytest.mark.unit


def test_hypercorn_keeps_what_the_app_queue_relies_on() -> None:
    """If this fails, re-read hypercorn/asyncio/task_group.py and tcp_server.py and adapt
    appqueue.TaskGroup (or drop it, if Hypercorn's own queue got lighter)."""
    assert version("hypercorn") == "0.18.0", "pinned in pyproject.toml: re-check appqueue.py"
    run = inspect.getsource(tcp_server.TCPServer.run)
    assert "TaskGroup(self.loop)" in run, "TCPServer no longer builds its task group by name"
    spawn_app = inspect.getsource(task_group.TaskGroup.spawn_app)
    assert "asyncio.Queue(config.max_app_queue_size)" in spawn_app
    assert "app_queue.get" in spawn_app and "return app_queue.put" in spawn_app
    assert list(inspect.signature(task_group.TaskGroup.spawn_app).parameters) == [
        "self",
        "app",
        "config",
        "scope",
        "send",
    ]
    assert list(inspect.signature(task_group._handle).parameters) == [
        "app",
        "config",
        "scope",
        "receive",
        "send",
        "sync_spawn",
        "call_soon",
    ]
    _hypercorn("127.0.0.1", 8000, load_settings())  # every server roomcast runs goes through it
    assert tcp_server.TaskGroup is appqueue.TaskGroup


async def test_items_come_out_in_order_and_put_waits_while_full() -> None:
    queue: AppQueue[int] = AppQueue(2)
    await queue.put(1)
    await queue.put(2)
    third = asyncio.create_task(queue.put(3))
    await asyncio.sleep(0.01)
    assert not third.done() and queue.full()
    assert await queue.get() == 1
    await asyncio.wait_for(third, 1)
    assert [await queue.get() for _ in range(2)] == [2, 3]
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_a_waiting_get_gets_the_next_item() -> None:
    queue: AppQueue[str] = AppQueue(10)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    await queue.put("frame")
    assert await asyncio.wait_for(getter, 1) == "frame"


async def test_a_cancelled_get_loses_no_item() -> None:
    queue: AppQueue[str] = AppQueue(10)
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    await queue.put("only")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs: `second` gets the item
    assert await asyncio.wait_for(second, 1) == "only"
    assert first.cancelled()
    assert queue.qsize() == 0


async def test_a_cancelled_put_frees_its_turn() -> None:
    queue: AppQueue[int] = AppQueue(1)
    await queue.put(1)
    stuck = asyncio.create_task(queue.put(2))
    waiting = asyncio.create_task(queue.put(3))
    await asyncio.sleep(0)
    assert queue.get_nowait() == 1  # wakes `stuck`...
    stuck.cancel()  # ...which is cancelled before it runs: `waiting` takes the slot
    await asyncio.wait_for(waiting, 1)
    assert queue.get_nowait() == 3


async def test_an_idle_queue_with_its_reader_waiting_is_small() -> None:
    """What every idle socket holds: an empty queue and one waiting reader (an asyncio.Queue
    was about 3.3 KB)."""
    n = 500
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        queues: list[AppQueue[int]] = [AppQueue(10) for _ in range(n)]
        readers = [asyncio.create_task(q.get()) for q in queues]
        await asyncio.sleep(0)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = heap.held(before, after, [appqueue.__file__])
    assert held / n < 400, f"{held / n:.0f} B per idle queue"
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


async def test_sockets_are_served_through_the_app_queue(connect) -> None:
    """A frame in, an answer out, and a close: the ASGI receive of a real socket is an
    AppQueue's get."""
    gets = []
    original = AppQueue.get

    async def counted(self: AppQueue[object]) -> object:
        gets.append(self)
        return await original(self)

    AppQueue.get = counted  # type: ignore[method-assign]
    try:
        client: ChatClient = await connect()
        await client.join("alice")
        await client.say("main", "through the light queue")
        await client.close()
    finally:
        AppQueue.get = original  # type: ignore[method-assign]
    assert gets, "the socket's frames did not come through AppQueue.get"
