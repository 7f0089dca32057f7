"""A token bucket per connection: `rate` per second, bursts of `burst`.

A bucket starts full and stays full while unused, so it keeps no state of its own until its
first `take`: a socket holds four of them (`connection.Limiters`) and most sockets never spend
from most (docs/performance.md, "Idle memory")."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens: float | None = None  # None: full, and never spent from
        self._stamp = 0.0

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self._clock()
        tokens = self._tokens
        if tokens is None:
            tokens = self._burst
        else:
            tokens = min(self._burst, tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if tokens >= 1:
            self._tokens = tokens - 1
            return True
        self._tokens = tokens
        return False
