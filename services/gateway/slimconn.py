"""What Hypercorn 0.18 keeps per connection that an upgraded WebSocket never uses, made lazy or
let go (docs/performance.md, "Idle memory").

- `LazyEvent`: Hypercorn's events (an `asyncio.Event` in a wrapper) allocate their waiters'
  deque up front: about 1 KB per connection for `H11Protocol.can_read`, which an upgraded
  WebSocket never waits on. This one makes its list of waiters on the first wait.
- `forget_http`: after a WebSocket's 101, Hypercorn's HTTP/1.1 protocol keeps the whole h11
  connection (its state machine, buffers and the parsed request's state, about 1.2 KB) only to
  frame HTTP responses, and a WebSocket sends none after its 101. It is replaced by a stand-in
  that refuses to send, so a change in Hypercorn that did send one fails loudly, not silently.

Hypercorn is pinned in pyproject.toml; tests/unit/test_memory_slimconn.py fails when the
internals this relies on move.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from hypercorn.asyncio import worker_context
from hypercorn.protocol.h11 import H11Protocol, H11WSConnection


class LazyEvent:
    """Hypercorn's `Event` (`asyncio.Event` behind async `set`/`clear`/`wait`), allocating
    nothing until someone waits."""

    __slots__ = ("_is_set", "_waiters")

    def __init__(self) -> None:
        self._is_set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    async def clear(self) -> None:
        self._is_set = False

    async def set(self) -> None:
        self._is_set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def is_set(self) -> bool:
        return self._is_set

    async def wait(self) -> None:
        if self._is_set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(waiter)
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):  # set() took the list already
                waiters.remove(waiter)


class UpgradedError(RuntimeError):
    """Hypercorn tried to send an HTTP/1.1 event on a connection upgraded to a WebSocket."""


class _Upgraded:
    """Where an upgraded connection's h11 connection was: it sends nothing."""

    __slots__ = ()

    def send(self, event: Any) -> bytes:
        raise UpgradedError(f"HTTP/1.1 {type(event).__name__} after the WebSocket upgrade")


_UPGRADED = _Upgraded()


def forget_http(stream: Any) -> bool:
    """Let go of the h11 connection under `stream`, an accepted WebSocket stream served over
    HTTP/1.1 (whose `send` is its `H11Protocol`'s); False where there is none to let go."""
    protocol = getattr(getattr(stream, "send", None), "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return False
    connection = protocol.connection
    if not isinstance(connection, H11WSConnection):
        return False
    connection.h11_connection = _UPGRADED  # type: ignore[assignment]
    return True


def install() -> None:
    """Make every connection Hypercorn's asyncio worker makes from now on use `LazyEvent`."""
    worker_context.WorkerContext.event_class = LazyEvent
