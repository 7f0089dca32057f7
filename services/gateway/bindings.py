"""Reference-counted bindings of the gateway's one queue.

A pattern is bound while anyone holds it. Broker operations on one pattern run one at a time, in
order, and each brings the binding to what the holders want *now*: a join racing the last leave
of a room can never end with the room unbound while someone is in it. Patterns do not wait for
each other.

A broker operation, once started, runs to its end even when its caller is cancelled (a join
whose socket closed, a join undone because presence did not answer): aiormq closes the whole
channel when a call in flight is cancelled, and that channel is the gateway's subscription, so
every room it serves would lose deliveries. The cancelled caller's own undo (`release`) then
settles the pattern again, behind it.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import structlog

from roomcast.shared.bus import BusUnavailableError, Subscription

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Gate:
    """One pattern's lock, and how many callers are using it (it goes with the last)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Bindings:
    def __init__(self) -> None:
        self._subscription: Subscription | None = None
        self._holders: dict[str, int] = {}
        self._bound: dict[str, int] = {}  # pattern -> the serial of its binding
        self._gates: dict[str, _Gate] = {}
        self._serials = itertools.count(1)

    def attach(self, subscription: Subscription) -> None:
        self._subscription = subscription

    def __len__(self) -> int:
        return len(self._bound)

    def serial(self, pattern: str) -> int | None:
        """Which binding of the pattern is in place (None: unbound): a new number each time it
        is bound, so whoever relies on "bound all along" can tell an unbind happened between."""
        return self._bound.get(pattern)

    async def hold(self, pattern: str) -> None:
        """Count one more holder; returns once the pattern is bound (raises if it cannot be)."""
        self._holders[pattern] = self._holders.get(pattern, 0) + 1
        try:
            await self._settle(pattern)
        except BaseException:
            await self.release(pattern)
            raise

    async def release(self, pattern: str) -> None:
        """Count one holder less; the last one unbinds (a failed unbind only costs traffic)."""
        count = self._holders.get(pattern, 0) - 1
        if count > 0:
            self._holders[pattern] = count
            return
        self._holders.pop(pattern, None)
        try:
            await self._settle(pattern)
        except BusUnavailableError as exc:
            log.warning("unbind failed; the binding stays until the queue goes", error=str(exc))

    async def _settle(self, pattern: str) -> None:
        gate = self._gates.get(pattern)
        if gate is None:
            if (pattern in self._holders) == (pattern in self._bound):
                return  # as wanted, and nothing in progress
            gate = self._gates[pattern] = _Gate()
        gate.users += 1  # now, so a settle that comes meanwhile waits behind this one
        await asyncio.shield(self._settling(pattern, gate))

    async def _settling(self, pattern: str, gate: _Gate) -> None:
        try:
            async with gate.lock:
                wanted = pattern in self._holders
                if wanted == (pattern in self._bound) or self._subscription is None:
                    return
                if wanted:
                    await self._subscription.bind(pattern)
                    self._bound[pattern] = next(self._serials)
                else:
                    self._bound.pop(pattern, None)  # from here on, events may be missed
                    await self._subscription.unbind(pattern)
        finally:
            gate.users -= 1
            if not gate.users:
                del self._gates[pattern]
