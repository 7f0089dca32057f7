"""A lighter queue between Hypercorn and each ASGI app call (one per socket), in place of the
`asyncio.Queue` Hypercorn 0.18 makes for every connection.

An `asyncio.Queue` allocates three deques and an `asyncio.Event` (a fourth deque) up front:
about 3.3 KB per socket, held for the socket's whole life although an idle WebSocket's queue is
empty with one reader waiting (docs/performance.md, "Idle memory"). `AppQueue` keeps the same
contract (first in, first out; `put` waits while `maxsize` items wait; a cancelled `get` loses
no item) with lists made on first use: an idle socket's queue holds one waiting future.

`install` swaps Hypercorn's per-connection `TaskGroup` for one whose `spawn_app` uses it.
Hypercorn is pinned in pyproject.toml; tests/unit/test_memory_appqueue.py fails loudly when the
internals this relies on move.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from hypercorn.asyncio import task_group as hypercorn_task_group
from hypercorn.asyncio import tcp_server
from hypercorn.config import Config

T = TypeVar("T")


class AppQueue(Generic[T]):
    """`asyncio.Queue`'s `get` and `put`, allocating nothing while empty with no one waiting."""

    __slots__ = ("_getters", "_items", "_maxsize", "_putters")

    def __init__(self, maxsize: int = 0) -> None:
        self._maxsize = maxsize
        self._items: list[T] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        self._putters: list[asyncio.Future[None]] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def full(self) -> bool:
        return 0 < self._maxsize <= self.qsize()

    async def put(self, item: T) -> None:
        while self.full():
            waiter = asyncio.get_running_loop().create_future()
            putters = self._putters
            if putters is None:
                putters = self._putters = []
            putters.append(waiter)
            try:
                await waiter
            except BaseException:
                _discard(putters, waiter)
                if not self.full() and not waiter.cancelled():
                    _wake(putters)  # it was woken: pass the free slot on
                raise
        self.put_nowait(item)

    def put_nowait(self, item: T) -> None:
        if self.full():
            raise asyncio.QueueFull
        items = self._items
        if items is None:
            self._items = [item]
        else:
            items.append(item)
        if self._getters:
            _wake(self._getters)

    async def get(self) -> T:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            getters = self._getters
            if getters is None:
                getters = self._getters = []
            getters.append(waiter)
            try:
                await waiter
            except BaseException:
                _discard(getters, waiter)
                if self._items and not waiter.cancelled():
                    _wake(getters)  # it was woken: pass the item on
                raise
        return self.get_nowait()

    def get_nowait(self) -> T:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.pop(0)  # at most `max_app_queue_size` (10) items: a list is enough
        if self._putters:
            _wake(self._putters)
        return item


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.pop(0)
        if not waiter.done():
            waiter.set_result(None)
            return


def _discard(waiters: list[asyncio.Future[None]], waiter: asyncio.Future[None]) -> None:
    with contextlib.suppress(ValueError):  # already woken, and removed then
        waiters.remove(waiter)


class TaskGroup(hypercorn_task_group.TaskGroup):
    """Hypercorn's per-connection task group, with an `AppQueue` per app call."""

    async def spawn_app(
        self,
        app: Any,
        config: Config,
        scope: Any,
        send: Callable[[Any], Awaitable[None]],
    ) -> Callable[[Any], Awaitable[None]]:
        app_queue: AppQueue[Any] = AppQueue(config.max_app_queue_size)
        handle = hypercorn_task_group._handle
        # bound methods, not a partial and a closure per call: they live as long as the socket
        self.spawn(handle, app, config, scope, app_queue.get, send, self._in_thread, self._wait)
        return app_queue.put

    def _in_thread(self, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """ASGI's `sync_spawn`: run `func` in the default executor."""
        return self._loop.run_in_executor(None, func, *args)

    def _wait(self, func: Callable[..., Any], *args: Any) -> Any:
        """ASGI's `call_soon`, from a worker thread: run `func` on the loop, return its result."""
        return asyncio.run_coroutine_threadsafe(func(*args), self._loop).result()


def install() -> None:
    """Make every connection Hypercorn's asyncio worker serves use `TaskGroup`."""
    tcp_server.TaskGroup = TaskGroup  # type: ignore[attr-defined]
