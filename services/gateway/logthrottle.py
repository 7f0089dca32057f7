"""Log lines that a flood cannot multiply: at most `burst` per key per `window` seconds.

What floods here is what clients do to a gateway in bulk (refused handshakes, thousands of
peers vanishing in one network outage); the metrics count every one, the log keeps a sample and
says how many it left out.
"""

from __future__ import annotations

import time


class LogThrottle:
    def __init__(self, burst: int = 10, window: float = 10.0) -> None:
        self._burst = burst
        self._window = window
        self._state: dict[str, list[float]] = {}  # key -> [window start, logged, left out]

    def allow(self, key: str) -> int | None:
        """None to stay quiet; otherwise how many lines were left out since the last one."""
        now = time.monotonic()
        state = self._state.setdefault(key, [now, 0, 0])
        if now - state[0] >= self._window:
            state[0], state[1] = now, 0
        if state[1] >= self._burst:
            state[2] += 1
            return None
        state[1] += 1
        left_out, state[2] = int(state[2]), 0
        return left_out
