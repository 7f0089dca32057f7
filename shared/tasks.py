"""Background tasks that are never silent zombies.

A supervised task that ends or raises (anything but a cancel) is logged with its reason,
counted in `roomcast_background_task_restarts_total{task}`, and started again after a short,
growing pause. While it is down, or after it has failed too often in a row, `healthy` is False,
so the service's /readyz says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import Counter

log = structlog.get_logger(__name__)

RESTARTS = Counter(
    "roomcast_background_task_restarts_total",
    "Background tasks that ended unexpectedly and were started again",
    ["task"],
)


class Supervised:
    """Runs `run()` as a task for as long as it is started, restarting it when it dies."""

    def __init__(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        *,
        first_delay: float = 0.1,
        max_delay: float = 5.0,
        give_up_after: int = 10,
    ) -> None:
        self.name = name
        self._run = run
        self._first = first_delay
        self._max = max_delay
        self._give_up = give_up_after
        self._failures = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done() and self._failures < self._give_up

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._keep(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep(self) -> None:
        delay = self._first
        while True:
            try:
                await self._run()
                reason = "returned"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                log.error("background task died", task=self.name, reason=reason, exc_info=True)
            else:
                log.error("background task ended", task=self.name, reason=reason)
            self._failures += 1
            RESTARTS.labels(self.name).inc()
            await asyncio.sleep(delay)
            delay = min(self._max, delay * 2)

    def ran_well(self) -> None:
        """Called by the task after a good round: the failure streak is over."""
        self._failures = 0
