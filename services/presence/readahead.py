"""A bounded cache of store answers that can be read ahead, outside presence's lock.

Presence judges requests one at a time under one lock, so a store read there stalls every
request behind it. A join's reads (is the room private, its moderation, the name's reservation)
are started when the request is delivered instead (`prefetch`), concurrently with the requests
ahead of it, and one read serves every request for the same key. Under the lock, `get` then
finds the answer cached.

The active replica is the only writer of what is cached here, and writes through `put`, so a
cached answer (a negative one too) stays true while it is active; the owner `clear`s on a
takeover. A read that was in flight when its key was written or the cache cleared is not
filled in (it may predate the write): the next `get` reads again, under the lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from roomcast.shared.store.base import StoreUnavailableError

from .cache import LRU

K = TypeVar("K")
V = TypeVar("V")


class ReadAhead(Generic[K, V]):
    def __init__(self, cap: int, load: Callable[[K], Coroutine[Any, Any, V]]) -> None:
        self._items: LRU[K, tuple[V]] = LRU(cap)  # wrapped, so a cached None is an answer
        self._load = load
        self._inflight: dict[K, asyncio.Task[V]] = {}
        self._running: set[asyncio.Task[V]] = set()  # a task needs a reference till it ends
        self.reads = 0  # store reads made, for tests and metrics

    def __len__(self) -> int:
        return len(self._items)

    def lookup(self, key: K) -> tuple[bool, V | None]:
        item = self._items.get(key)
        return (False, None) if item is None else (True, item[0])

    def put(self, key: K, value: V) -> None:
        """What this replica wrote: authoritative, and a read in flight must not undo it."""
        self._inflight.pop(key, None)
        self._items.put(key, (value,))

    def forget(self, key: K) -> None:
        """A write whose outcome is unknown (the store failed): read the store next time."""
        self._inflight.pop(key, None)
        self._items.pop(key)

    def clear(self) -> None:
        self._inflight.clear()
        self._items.clear()

    async def get(self, key: K) -> V:
        """The cached answer, or the store's (waiting for a read ahead already in flight)."""
        item = self._items.get(key)
        if item is not None:
            return item[0]
        task = self._inflight.get(key)
        if task is not None:
            await task
            self._filled(key, task)  # its callback may not have run yet
            item = self._items.get(key)  # the read's answer, or a write's since
            if item is not None:
                return item[0]
        self.reads += 1
        value = await self._load(key)
        self._items.put(key, (value,))
        return value

    def prefetch(self, key: K) -> asyncio.Task[V] | None:
        """Start reading `key` unless it is cached or already being read; store failures are
        left to the `get` under the lock, which reads again."""
        if key in self._items:
            return None
        task = self._inflight.get(key)
        if task is None:
            self.reads += 1
            task = asyncio.create_task(self._load(key))
            self._inflight[key] = task
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            task.add_done_callback(lambda done: self._filled(key, done))
        return task

    def _filled(self, key: K, task: asyncio.Task[V]) -> None:
        if self._inflight.get(key) is not task:
            return  # written or cleared meanwhile: the answer may be stale
        del self._inflight[key]
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._items.put(key, (task.result(),))
        elif not isinstance(error, StoreUnavailableError):
            raise error  # a bug, not an outage: let the loop's handler log it
